"""Shared fixtures for the pytest suite of pp (engine in C).

Everything here uses real worker processes: no mocks. Provides
  * ``server``: one pp.Server(ncpus=2) per test module, destroyed at teardown;
  * ``fresh_server``: a factory of servers that are destroyed after the test;
  * ``run_python``: run a script file (or ``python -c`` code) in a child
    interpreter that imports the same ``pp`` as this process (``child_env``
    is the environment it uses);
  * ``wait_until``: poll a condition with a generous deadline;
  * ``kill_workers_mid_job``: SIGKILL a server's workers under a running
    job and check that the job fails with WorkerError;
  * plain helpers: ``alive(pid)``, ``mapping_of(addr)`` (its /proc/self/maps
    line), ``fork_checker`` (a forked child checks what it kept while the
    parent goes on), ``run_script`` (a script file in a child interpreter)
    and ``SCRIPT_HELPERS`` (wait_until and alive as source for such scripts).
Every test without its own ``timeout`` marker gets one (60 s), so a hang
fails the test instead of stalling the run.

Only the standard library, pytest and pp are imported here: this file is
also loaded when the Makefile runs tests/test_asan_subset.py against an
AddressSanitizer build of the extension.
"""
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pp

DEFAULT_TIMEOUT = 60
NCPUS = 2


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")
    config.addinivalue_line("markers", "timeout(seconds): fail the test after so many seconds")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.fixture(scope="module")
def server():
    s = pp.Server(ncpus=NCPUS)
    yield s
    s.destroy()


def tracked(make, close):
    """The body of a factory fixture (use with ``yield from``): yields a
    function that calls make(*args, **kwargs) and keeps what it returns;
    at teardown close(x) is called on each of them, oldest first."""
    made = []

    def new(*args, **kwargs):
        x = make(*args, **kwargs)
        made.append(x)
        return x

    yield new
    for x in made:
        close(x)


@pytest.fixture
def fresh_server():
    yield from tracked(pp.Server, pp.Server.destroy)


def _wait_until(pred, timeout=20.0, interval=0.01):
    """Poll pred() until it is true; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


@pytest.fixture
def wait_until():
    return _wait_until


def alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


# wait_until and alive for the scripts tests run in child interpreters
# (paste it after their `import os, time`)
SCRIPT_HELPERS = (inspect.getsource(_wait_until).replace("def _wait_until", "def wait_until")
                  + "\n\n" + inspect.getsource(alive))


def assert_nothing_pending(server):
    """wait() returns at once: no job was left behind (a job counted but
    never run, or never finished, would make it wait forever)."""
    waiter = threading.Thread(target=server.wait, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "wait() did not return: a job was left pending"


def kill_workers_mid_job(server, job, after):
    """SIGKILL every worker of server after `after` seconds; the job they
    were running must fail with pp.WorkerError, as in pp."""
    time.sleep(after)
    for pid in server._worker_pids():
        os.kill(pid, 9)
    with pytest.raises(pp.WorkerError):
        job()


def child_env():
    """Environment for child interpreters: they import the pp this process
    imported (the in-place build, or the ASan build of the Makefile)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pp.__file__)))
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(source, tmp_path, timeout=60, env_extra=None, env_drop=()):
    """Write source to tmp_path/script.py and run it in a child interpreter
    (child_env() less env_drop, plus env_extra) -> CompletedProcess."""
    env = child_env()
    for k in env_drop:
        env.pop(k, None)
    env.update(env_extra or {})
    path = os.path.join(str(tmp_path), "script.py")
    with open(path, "w") as f:
        f.write(source)
    return subprocess.run([sys.executable, path], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(name="child_env")
def child_env_fixture():
    return child_env()


@pytest.fixture
def run_python(tmp_path):
    """run_python(source, as_c=False, timeout=60, args=()) -> CompletedProcess.

    The source is dedented; by default it is written to tmp_path/script.py
    and run as a script (so its functions live in a real ``__main__`` with
    a source file); with as_c=True it is run with ``python -c``."""

    def run(source, as_c=False, timeout=60, args=(), name="script.py"):
        source = textwrap.dedent(source)
        if as_c:
            cmd = [sys.executable, "-c", source]
        else:
            path = tmp_path / name
            path.write_text(source)
            cmd = [sys.executable, str(path)]
        return subprocess.run(
            cmd + list(args),
            cwd=str(tmp_path),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def check_ok(proc):
    """Assert a child finished with status 0, showing its output if not."""
    assert proc.returncode == 0, "child failed (rc=%s)\n--- stdout\n%s\n--- stderr\n%s" % (
        proc.returncode,
        proc.stdout,
        proc.stderr,
    )
    return proc.stdout


@pytest.fixture
def ok():
    return check_ok


def mapping_of(addr):
    """The /proc/self/maps line whose mapping holds address addr, or None."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.strip()
    return None


def fork_checker(check):
    """Fork a child that waits, then exits 0 if check() is true. Returns a
    function that lets the child go and tells whether it exited 0: the
    parent changes what it likes in between."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.read(rd, 1)
            ok = bool(check())
        finally:
            os._exit(0 if ok else 1)

    def verdict():
        os.write(wr, b"g")
        _, st = os.waitpid(pid, 0)
        os.close(rd)
        os.close(wr)
        return os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0

    return verdict
