"""`import pp` stays cheap, and lazy imports change nothing a user sees.

Each test runs a fresh interpreter (a module imported by this pytest
process says nothing about what `import pp` imports): after `import pp`
none of the heavy standard modules it used to import eagerly is loaded;
a Server still logs its errors (a callback that raises, an unreachable
ppserver) to the ``pp`` logger, reached as ``pp.logger`` or through
``logging``; the default pickle protocol is still pickle's highest; on a
free-threaded CPython the extensions keep the GIL on.
"""
import sysconfig

import pytest

# Imported eagerly by pp before (logging, ast, pickle: ~25 ms of `import pp`)
# or by what they pull in; none of them is needed until a Server is made.
HEAVY = ("logging", "ast", "inspect", "threading", "pickle", "_pickle", "weakref", "re",
         "enum", "collections", "functools", "textwrap", "traceback", "linecache", "tokenize",
         "typing", "dis", "socket", "subprocess", "configparser", "string")


def test_import_pp_loads_no_heavy_module(run_python, ok):
    out = ok(run_python("""
        import sys
        before = set(sys.modules)
        import pp
        new = set(sys.modules) - before
        print(sorted(new & set(%r)))
        print(pp.__version__, pp.Server.__name__, pp.Template.__name__)
    """ % (HEAVY,), as_c=True))
    lines = out.splitlines()
    assert lines[0] == "[]", "import pp loaded " + lines[0]
    assert lines[1].split()[1:] == ["Server", "Template"]


def test_errors_still_reach_the_pp_logger(run_python, ok, tmp_path):
    out = ok(run_python("""
        import socket

        import pp  # before logging: the pp logger is made lazily
        import logging

        assert pp.logger is logging.getLogger("pp")
        records = []


        class Keep(logging.Handler):
            def emit(self, record):
                records.append((record.name, record.levelno, record.getMessage()))


        pp.logger.addHandler(Keep())
        pp.logger.setLevel(logging.DEBUG)


        def square(x):
            return x * x


        def bad_callback(result):
            raise RuntimeError("callback failure %d" % result)


        def errors():
            return [m for name, level, m in records if name == "pp" and level >= logging.ERROR]


        # a callback that raises: logged, the server keeps working
        s = pp.Server(1)
        s.submit(square, (4,), callback=bad_callback)
        s.wait()
        assert s.submit(square, (5,))() == 25
        s.destroy()
        assert any("callback failure 16" in m for m in errors()), records

        # an unreachable ppserver: logged with its address
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        addr = "127.0.0.1:%d" % sock.getsockname()[1]
        sock.close()  # nothing listens there
        with pp.Server(1, ppservers=(addr,), secret="s3cret") as s:
            assert s.submit(square, (3,))() == 9
            import time
            deadline = time.monotonic() + 10
            while not any(addr in m for m in errors()) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert any(addr in m for m in errors()), records
        print("ok")
    """))
    assert out.strip() == "ok"


def test_server_imports_logging_only_for_a_message(run_python, ok):
    # A Server whose jobs go well never imports logging (its import is most of
    # a new Server's cost); the first message imports it, and a handler the
    # program added after making the Server receives it.
    out = ok(run_python("""
        import sys

        import pp


        def square(x):
            return x * x


        def bad_callback(result):
            raise RuntimeError("late handler sees %d" % result)


        s = pp.Server(1)
        assert s.submit(square, (3,))() == 9
        print("logging" in sys.modules)

        import logging
        records = []


        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())


        logging.getLogger("pp").addHandler(Keep())
        s.submit(square, (4,), callback=bad_callback)
        s.wait()
        s.destroy()
        print(any("late handler sees 16" in m for m in records))
    """))
    assert out.split() == ["False", "True"]


def test_default_protocol_is_pickles_highest(run_python, ok):
    out = ok(run_python("""
        import inspect
        import pickle
        import pp
        print(inspect.signature(pp.Server.__init__).parameters["proto"].default
              == pickle.HIGHEST_PROTOCOL)
    """, as_c=True))
    assert out.strip() == "True"


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"),
                    reason="needs a free-threaded CPython (3.13t or later) to run pp under")
def test_free_threaded_interpreter_keeps_the_gil_for_pp(run_python, ok):
    out = ok(run_python("""
        import sys
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import pp
            import pp._ppcw
        print(sys._is_gil_enabled(), [str(w.message) for w in caught])
    """, as_c=True))
    assert out.startswith("True"), out
