"""Function shipping: how a job's function, its helpers and its arguments
reach the worker (DESIGN.md "Function shipping").

Covers the four forms of src/py/ship.c, each through real workers:
  * by reference: builtins (min, pow), stdlib functions (math.sin,
    os.path.join), functions and bound methods of an importable module
    (tests/helpers_mod.py);
  * by source: functions, classes and methods defined in a ``__main__``
    script (run as a child interpreter, since pytest's own __main__ is not
    a script), including tracebacks that point at the script's lines;
  * by code object: lambdas, closures, decorated functions, functions
    defined in ``python -c``;
  * pickled: callable instances and partials, with their state of each
    submit;
and depfuncs, modules given as "math" / "import x" / "from x import y",
globals=globals() auto-import (module aliases and helper functions), bound
methods (self travels), instances of user classes as arguments and
results (the scan of their pickles for __main__ names leaks nothing), and
what a job prints appearing on the client's stdout when its result is
taken.
"""
import marshal
import math
import operator
import os
import os.path
import struct

import pytest

import helpers_mod as H


# --------------------------------------------------------------- by reference

def test_builtin_by_reference(server):
    assert server.submit(min, (3, 1, 2))() == 1
    assert server.submit(pow, (2, 10))() == 1024
    assert server.submit(len, ("abcd",))() == 4


def test_stdlib_functions_by_reference(server):
    assert server.submit(math.sin, (0.5,))() == math.sin(0.5)
    assert server.submit(os.path.join, ("a", "b", "c"))() == os.path.join("a", "b", "c")
    assert server.submit(operator.mul, (6, 7))() == 42


def test_helper_module_function_by_reference(server):
    jobs = [server.submit(H.square, (i,)) for i in range(20)]
    assert [j() for j in jobs] == [i * i for i in range(20)]


def test_helper_module_is_imported_in_worker(server):
    # the job itself imports helpers_mod by name in the worker: sys.path travelled
    assert server.submit(H.import_and_call, ("helpers_mod", "getpid"))() in server._worker_pids()


def test_bound_method_of_module_class(server):
    c = H.Counter(100)
    assert server.submit(c.add, (5,))() == 105
    name, base, pid = server.submit(c.whoami)()
    assert (name, base) == ("Counter", 100)
    assert pid != os.getpid()


def test_bound_method_self_state_travels_each_time(server):
    a, b = H.Counter(1), H.Counter(1000)
    ja = server.submit(a.add, (1,))
    jb = server.submit(b.add, (1,))
    a.base = 50  # changed after submit: the job keeps what was submitted
    assert (ja(), jb()) == (2, 1001)
    assert server.submit(a.add, (1,))() == 51


def test_callable_instance(server):
    assert server.submit(H.Multiplier(3), (5,))() == 15


def test_callable_instance_state_is_current(server):
    # The object is the function: what it holds at submit time must travel,
    # as arguments do, not what it held the first time it was submitted.
    m = H.Multiplier(2)
    assert server.submit(m, (10,))() == 20
    m.k = 3
    assert server.submit(m, (10,))() == 30


def test_partial_by_value(server):
    import functools

    assert server.submit(functools.partial(H.add, 100), (1,))() == 101
    assert server.submit(functools.partial(pow, 2), (5,))() == 32


def test_instances_of_module_class_as_args_and_result(server):
    assert server.submit(H.box_double, (H.Box(21),))() == H.Box(42)
    assert server.submit(H.identity, ([H.Box(1), H.Box("x")],))() == [H.Box(1), H.Box("x")]


# --------------------------------------------------------------- by code object

def test_lambda(server):
    assert server.submit(lambda x, y: x * y + 1, (6, 7))() == 43


def test_lambda_with_defaults_and_kwdefaults(server):
    def f(a, b=10, *, c=100):
        return a + b + c

    assert server.submit(f, (1,))() == 111
    assert server.submit(f, (1, 2))() == 103


def test_closure(server):
    def make_adder(n):
        def add(x):
            return x + n
        return add

    add5, add7 = make_adder(5), make_adder(7)
    assert server.submit(add5, (1,))() == 6
    assert server.submit(add7, (1,))() == 8  # same code, other closure value


def test_closure_sees_current_cell_values(server):
    # A closure reads its free variables when it runs: rebinding one between
    # submits must change what the next job computes, as it does locally.
    scale = 0

    def job(x):
        return x * scale

    remote, local = [], []
    for scale in (1, 2, 3):
        remote.append(server.submit(job, (10,))())
        local.append(job(10))
    assert local == [10, 20, 30]
    assert remote == local


def test_closure_over_data(server):
    table = {"a": 1, "b": 2}
    assert server.submit(lambda k: table[k] * 10, ("b",))() == 20


def test_closure_capturing_nested_function(server):
    # An ordinary closure whose free variable is another local function:
    # DESIGN.md ships closures as code object + closure values.
    def outer():
        def helper(x):
            return x + 1

        def f(x):
            return helper(x) * 2
        return f

    assert server.submit(outer(), (1,))() == 4


def test_local_functions_with_depfuncs(server):
    def dep_helper(x):
        return x + 100

    # a code object naming dep_helper as a global: found because depfuncs sent it
    main = eval("lambda x: dep_helper(x) * 2", {})
    assert server.submit(main, (1,), depfuncs=(dep_helper,))() == 202


def test_recursive_local_function(server):
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert server.submit(fact, (10,))() == 3628800


# --------------------------------------------------------------- modules

def test_modules_plain_name(server):
    assert server.submit(lambda x: math.floor(x), (2.7,), modules=("math",))() == 2


def test_modules_import_statement(server):
    # cmath is not imported in this file: the worker imports it
    assert server.submit(lambda x: cmath.sqrt(x).real, (9,), modules=("import cmath",))() == 3


def test_modules_from_import(server):
    f = lambda a, b: Fraction(a, b)  # noqa: E731,F821 - Fraction comes from `modules`
    from fractions import Fraction as F
    assert server.submit(f, (1, 3), modules=("from fractions import Fraction",))() == F(1, 3)


def test_modules_dotted_and_alias(server):
    f = lambda *p: op.join(*p)  # noqa: E731,F821
    assert server.submit(f, ("x", "y"), modules=("import os.path as op",))() == os.path.join("x", "y")


def test_missing_modules_is_name_error(fresh_server):
    s = fresh_server(ncpus=1)
    # a fresh worker has not imported `colorsys`; without modules=... the name is unknown
    with pytest.raises(NameError):
        s.submit(lambda: colorsys.rgb_to_hsv(1, 0, 0))()  # noqa: F821


# --------------------------------------------------------------- scripts: __main__ by source

def test_main_functions_by_source(run_python, ok):
    out = ok(run_python("""
        import pp

        def helper(x):
            return x + 100

        def f(x):
            return helper(x) * 2

        if __name__ == "__main__":
            with pp.Server(2) as s:
                jobs = [s.submit(f, (i,), depfuncs=(helper,)) for i in range(5)]
                print([j() for j in jobs])
    """))
    assert out.strip() == str([(i + 100) * 2 for i in range(5)])


def test_main_function_without_depfuncs_is_name_error(run_python, ok):
    out = ok(run_python("""
        import pp

        def helper_not_sent(x):
            return x

        def f(x):
            return helper_not_sent(x)

        with pp.Server(1) as s:
            try:
                s.submit(f, (1,))()
            except NameError as e:
                print("NameError", e)
    """))
    assert out.strip() == "NameError name 'helper_not_sent' is not defined"


def test_main_traceback_points_at_script_lines(run_python, ok, tmp_path):
    out = ok(run_python("""
        import pp

        def boom(x):
            y = x + 1
            raise ValueError("boom %d" % y)

        with pp.Server(1) as s:
            try:
                s.submit(boom, (1,))()
            except ValueError as e:
                print("caught:", e)
                print(str(e.__cause__))
    """))
    assert "caught: boom 2" in out
    script = str(tmp_path / "script.py")
    assert 'File "%s", line 6, in boom' % script in out
    assert 'raise ValueError("boom %d" % y)' in out


def test_main_globals_autoimport(run_python, ok):
    out = ok(run_python("""
        import math as m
        import os.path
        import pp

        def helper(x):
            return m.sqrt(x)

        def middle(x):
            return helper(x) + 1

        def job(x):
            return middle(x) * 10 + m.floor(2.5), os.path.basename("/a/b.txt")

        if __name__ == "__main__":
            with pp.Server(2) as s:
                print(s.submit(job, (16,), globals=globals())())
    """))
    assert out.strip() == "(52.0, 'b.txt')"


def test_main_class_instances_as_args_and_results(run_python, ok):
    out = ok(run_python("""
        import pp

        class Point(object):
            def __init__(self, x, y):
                self.x, self.y = x, y

            def scaled(self, k):
                return Point(self.x * k, self.y * k)

        def double(p):
            return p.scaled(2)

        def make(x):
            return Point(x, -x)

        def sum_points(points):
            return Point(sum(p.x for p in points), sum(p.y for p in points))

        with pp.Server(2) as s:
            r = s.submit(double, (Point(1, 2),))()
            print(type(r).__module__, type(r).__name__, type(r) is Point, r.x, r.y)
            r = s.submit(make, (5,), depfuncs=(Point,))()
            print(type(r) is Point, r.x, r.y)
            r = s.submit(sum_points, ([Point(1, 1), Point(2, 3)],))()
            print(type(r) is Point, r.x, r.y)
    """))
    assert out.splitlines() == ["__main__ Point True 2 4", "True 5 -5", "True 3 4"]


def test_main_bound_method_self_travels(run_python, ok):
    out = ok(run_python("""
        import pp

        class Acc(object):
            def __init__(self, owner, balance):
                self.owner, self.balance = owner, balance

            def report(self, extra):
                return "%s:%d" % (self.owner, self.balance + extra)

        with pp.Server(1) as s:
            print(s.submit(Acc("ann", 10).report, (5,))())
            print(s.submit(Acc("bob", 1).report, (1,))())
    """))
    assert out.split() == ["ann:15", "bob:2"]


def test_main_decorated_function(run_python, ok):
    out = ok(run_python("""
        import functools
        import pp

        def twice(f):
            @functools.wraps(f)
            def wrapper(x):
                return f(f(x))
            return wrapper

        @twice
        def inc(x):
            return x + 1

        with pp.Server(1) as s:
            print(s.submit(inc, (1,))())
    """))
    assert out.strip() == "3"


# --------------------------------------------------------------- python -c: code objects

def test_python_c_functions_lambdas_closures(run_python, ok):
    out = ok(run_python("""
import math
import pp

def helper(x):
    return x + 100

def f(x):
    return helper(x) * 2

def make_adder(n):
    def add(x):
        return x + n
    return add

with pp.Server(2) as s:
    print(s.submit(f, (1,), depfuncs=(helper,))())
    print(s.submit(lambda x: x * 3, (5,))())
    print(s.submit(make_adder(10), (5,))())
    print(s.submit(lambda x: math.sqrt(x), (16,), modules=("math",))())
""", as_c=True))
    assert out.split() == ["202", "15", "15", "4.0"]


def test_python_c_exception_traceback_names_function(run_python, ok):
    out = ok(run_python("""
import pp

def failing_in_c(x):
    raise KeyError(x)

with pp.Server(1) as s:
    try:
        s.submit(failing_in_c, ("k",))()
    except KeyError as e:
        print("KeyError", e)
        print(e.__cause__)
""", as_c=True))
    assert "KeyError 'k'" in out
    assert "failing_in_c" in out


# --------------------------------------------------------------- printed output

def test_job_output_appears_when_result_is_taken(run_python, ok):
    out = ok(run_python("""
        import sys
        import pp

        def printer(i):
            print("job", i, "line a")
            print("job", i, "line b")
            sys.stderr.write("job %d err\\n" % i)
            return i

        with pp.Server(2) as s:
            j1 = s.submit(printer, (1,), modules=("sys",))
            j2 = s.submit(printer, (2,), modules=("sys",))
            j1.wait()
            j2.wait()
            print("before")
            assert j2() == 2
            print("middle")
            assert j1() == 1
            print("after")
            j1()  # taken again: printed once only
            print("end")
    """))
    assert out.splitlines() == [
        "before",
        "job 2 line a", "job 2 line b", "job 2 err",
        "middle",
        "job 1 line a", "job 1 line b", "job 1 err",
        "after",
        "end",
    ]


def test_output_of_failing_job_is_shown(run_python, ok):
    out = ok(run_python("""
        import pp

        def chatty_failure():
            print("about to fail")
            raise RuntimeError("failed")

        with pp.Server(1) as s:
            try:
                s.submit(chatty_failure)()
            except RuntimeError as e:
                print("caught", e)
    """))
    assert out.splitlines() == ["about to fail", "caught failed"]


def test_non_ascii_output_and_results(server, capsys):
    text = "h\u00e9llo \u2713 \u65e5\u672c"
    capsys.readouterr()
    assert server.submit(print, (text,))() is None
    assert capsys.readouterr().out == text + "\n"
    assert server.submit(H.identity, (text,))() == text


def test_job_output_with_capsys(server, capsys):
    jobs = [server.submit(H.noisy, (i,)) for i in range(3)]
    server.wait()
    assert capsys.readouterr().out == ""
    assert [j() for j in jobs] == [0, 1, 2]
    assert capsys.readouterr().out == "noisy job 0\nnoisy job 1\nnoisy job 2\n"


def test_main_functions_whose_text_leaves_the_indentation(run_python, ok):
    # __main__ functions are shipped by source read straight from the file
    # (ship.c fast_source) when the lines indented under the def compile;
    # text at column 0 inside strings or brackets, comments at column 0 and
    # a registering decorator must still give the whole, right function
    out = ok(run_python('''
        import pp

        REG = []

        def register(f):
            REG.append(f)
            return f

        def text():
            s = """
        col0 = 1
        """
            return s

        def bracket():
            x = [1,
        2]
        # a comment at column 0 inside the body
            return x

        def cont():
            y = 1 + \\
        2
            return y
        @register
        def decorated(v):
            return v * 3
        def last(v): return -v

        with pp.Server(1) as s:
            print(repr(s.submit(text)()))
            print(s.submit(bracket)(), s.submit(cont)(), s.submit(decorated, (2,))(),
                  s.submit(last, (4,))())
    '''))
    assert out.splitlines() == ["'\\ncol0 = 1\\n'", "[1, 2] 3 6 -4"]


def test_main_names_scan_does_not_leak(run_python, ok):
    # Arguments that are instances of a __main__ class make the client scan
    # their pickle for __main__ names at every submit. With protocols 0-3
    # the names come from GLOBAL opcodes; each such name must be released
    # after the scan. A class name of 4000 characters makes a leak of one
    # string per submit (1.2 MB over 300 submits) stand out of the noise.
    name = "P" + "x" * 4000
    out = ok(run_python('''
        import tracemalloc
        import pp

        class %s(object):
            pass

        def f(p):
            return type(p).__name__[:2]

        with pp.Server(1, proto=2) as s:
            for _ in range(50):
                s.submit(f, (%s(),))()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            results = set(s.submit(f, (%s(),))() for _ in range(300))
            print(results, tracemalloc.get_traced_memory()[0] - before)
    ''' % (name, name, name)))
    results, grown = out.split()
    assert results == "{'Px'}"
    assert int(grown) < 100000, "%s bytes kept by 300 submits" % grown


# --------------------------------------------------------------- malformed blobs

def _frame(ftype, fid, payload, aux=0):
    # frame.h: u64 len, u64 id, u8 type, u8 flags, u16 aux, u32 extra, payload
    return struct.pack("<QQBBHI", len(payload), fid, ftype, 0, aux, 0) + payload


def _read_frame(f):
    hdr = f.read(24)
    assert len(hdr) == 24, "the worker closed its pipe (it died)"
    n, fid, ftype, _, _, _ = struct.unpack("<QQBBHI", hdr)
    return ftype, fid, f.read(n)


def test_malformed_blobs_fail_their_jobs_and_the_worker_keeps_serving(tmp_path):
    # A worker is given blobs no client makes (a ppserver's worker runs
    # blobs of any authenticated client): each one must fail the jobs of
    # that function with a clear error, never crash the worker. A code
    # object with free variables and no closure (or a closure of the wrong
    # size) would make the interpreter read past the closure.
    import pickle
    import subprocess
    import sys

    import pp

    INIT, FUNC, JOB, RESULT = 1, 2, 3, 4

    def make(n):
        return lambda: n

    code = marshal.dumps(make(1).__code__)  # one free variable
    blobs = {
        10: ((), (), ("code", "f", code, None, None, None, "f", None)),
        11: ((), (), ("code", "f", code, None, None, (1, 2), "f", None)),
        12: ((), (), ("src", "f", "f", "f", b"def f(): pass", "x.py", 1)),
        13: ((), (), ("nonsense", "f")),
        14: ((), ("not a spec",), ("ref", "abs", "builtins", "abs")),
        15: ("not a blob",),
        16: ((), (), ("code", "f", code, None, None, (41,), "f", None)),  # a good one
    }
    messages = {
        10: b"closure does not fit the code",
        11: b"closure does not fit the code",
        12: b"malformed function blob: src spec",
        13: b"malformed function blob: unknown spec 'nonsense'",
        14: b"malformed function blob: spec",
        15: b"blob",
    }
    ppdir = os.path.dirname(os.path.abspath(pp.__file__))
    to_w, w_in = os.pipe()
    w_out, from_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-S", "-s", "-c",
         "import sys;sys.path.insert(0,sys.argv[1]);import _ppcw;"
         "_ppcw.worker_main(int(sys.argv[2]),int(sys.argv[3]))", ppdir, str(to_w), str(from_w)],
        pass_fds=(to_w, from_w))
    os.close(to_w)
    os.close(from_w)
    try:
        with os.fdopen(w_in, "wb") as out, os.fdopen(w_out, "rb") as inp:
            init = {"path": sys.path, "cwd": str(tmp_path), "proto": 4}
            out.write(_frame(INIT, 0, pickle.dumps(init)))
            out.flush()
            assert _read_frame(inp)[0] == INIT
            for fid, blob in blobs.items():
                out.write(_frame(FUNC, fid, pickle.dumps(blob)))
                out.write(_frame(JOB, 100 + fid, struct.pack("<Q", fid) + pickle.dumps(())))
            out.flush()
            for fid in blobs:
                ftype, jid, payload = _read_frame(inp)
                assert (ftype, jid) == (RESULT, 100 + fid)
                if fid in messages:
                    assert messages[fid] in payload, (fid, payload)
                else:
                    assert b"malformed" not in payload and b"Error" not in payload, payload
    finally:
        proc.kill()
        proc.wait()
