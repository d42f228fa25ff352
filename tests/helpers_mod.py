"""Job functions and classes for the pytest suite, in an importable module.

Functions here have ``__module__ == "helpers_mod"`` and live in the tests/
directory, which pytest puts on ``sys.path``; the workers receive the
client's ``sys.path``, so these travel to the workers *by reference*
(module + qualified name). Keep this module free of side effects at import:
every worker that runs one of these jobs imports it.
"""
import os
import sys
import threading
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def getpid():
    return os.getpid()


def pid_after(seconds):
    """Sleep, then return the worker's pid (keeps a worker busy)."""
    time.sleep(seconds)
    return os.getpid()


def tagged_sleep(tag, seconds):
    time.sleep(seconds)
    return tag


def wait_for_file(path, timeout=30.0, started=None):
    """Block until `path` exists (a gate the test opens), at most `timeout`
    seconds; if `started` is given, create that file first so the test knows
    the job is running. Returns (pid, whether the gate opened)."""
    if started:
        with open(started, "w"):
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return os.getpid(), True
        time.sleep(0.01)
    return os.getpid(), False


def cwd_and_path():
    return os.getcwd(), list(sys.path)


def import_and_call(modname, attr):
    """Import a module by name in the worker and return module.attr()."""
    import importlib

    mod = importlib.import_module(modname)
    return getattr(mod, attr)()


def fail_with_value_error(msg):
    raise ValueError(msg)


def exit_with(code):
    os._exit(code)


def kill_self(sig=9):
    os.kill(os.getpid(), sig)
    time.sleep(10)


def thread_ident():
    return threading.get_ident()


def length_and_sum(data):
    return len(data), sum(data)


def noisy(i):
    print("noisy job %d" % i)
    return i


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable(msg):
    raise UnpicklableError(msg)


class TwoArgError(Exception):
    """Pickles fine but cannot be unpickled: BaseException.__reduce__ gives
    (cls, self.args) and self.args has one element, __init__ wants two."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_two_arg_error():
    raise TwoArgError("first", "second")


class Counter(object):
    """A plain class whose bound methods are submitted (self travels)."""

    def __init__(self, base):
        self.base = base

    def add(self, x):
        return self.base + x

    def whoami(self):
        return type(self).__name__, self.base, os.getpid()


class Box(object):
    """A value container used as an argument and as a result."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Box) and other.value == self.value

    def __repr__(self):
        return "Box(%r)" % (self.value,)


def box_double(box):
    return Box(box.value * 2)


class Multiplier(object):
    """A callable instance: submitted as the job's function itself."""

    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def pack_args(*args):
    """Return the positional arguments as the tuple they arrived in."""
    return args
