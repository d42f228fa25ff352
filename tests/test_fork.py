"""The user's program forks while a Server lives (os.fork, multiprocessing
with the fork start method).

The child must get a clear RuntimeError, never a hang, when it touches the
parent's Server or its Jobs, and may make a Server of its own that works.
The parent must not notice the child: its workers' pipes are closed in the
child, so destroy() and set_ncpus() shrinking stop the workers at once
while the child lives.

Each check runs in a child interpreter (a script) with a timeout, so a hang
is a test failure rather than a stuck suite.
"""
import textwrap

import pytest

from conftest import SCRIPT_HELPERS, check_ok, run_script

PRELUDE = '''
import multiprocessing, os, select, signal, sys, time
import pp

def square(x):
    return x * x

''' + SCRIPT_HELPERS + '''

def child_holding_fds():
    """Fork a child that sleeps until its stdin-like pipe is closed; it
    keeps whatever the fork gave it. Returns (pid, fd to close to end it)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    return pid, w
'''


def run(body, timeout=60, tmp_path=None, env_extra=None):
    return run_script(PRELUDE + textwrap.dedent(body), tmp_path, timeout, env_extra)


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_child_of_os_fork_gets_a_clear_error_not_a_hang(tmp_path, start):
    out = check_ok(run('''
        s = pp.Server(2)
        done = s.submit(square, (3,))
        assert done() == 9
        pending = s.submit(time.sleep, (0.5,))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            msgs = []
            calls = [
                ("submit", lambda: s.submit(square, (2,))),
                ("job", lambda: pending()),
                ("job.wait", lambda: pending.wait()),
                ("wait", lambda: s.wait()),
                ("get_ncpus", lambda: s.get_ncpus()),
                ("set_ncpus", lambda: s.set_ncpus(1)),
                ("get_stats", lambda: s.get_stats()),
                ("get_active_nodes", lambda: s.get_active_nodes()),
            ]
            for name, call in calls:
                try:
                    call()
                    msgs.append("%s: no error" % name)
                except RuntimeError as e:
                    msgs.append("%s: %s" % (name, e))
                except BaseException as e:
                    msgs.append("%s: %r" % (name, e))
            s.destroy()  # cleanup in a child is allowed and touches nothing
            os.write(w, "\\n".join(msgs).encode())
            os._exit(0)
        os.close(w)
        got = b""
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            got += b
        _, st = os.waitpid(pid, 0)
        assert st == 0, st
        print(got.decode())
        # the parent's server is untouched
        assert pending() is None
        assert s.submit(square, (5,))() == 25
        s.destroy()
    ''', timeout=30, tmp_path=tmp_path, env_extra={"PPC_START": start}))
    lines = out.strip().splitlines()
    assert len(lines) == 8, out
    parent = None
    for line in lines:
        name, _, msg = line.partition(": ")
        assert "belongs to process" in msg and "forked child" in msg, line
        pid = int(msg.split("belongs to process ")[1].split(";")[0])
        assert parent in (None, pid)
        parent = pid


def test_child_may_make_its_own_server(tmp_path):
    out = check_ok(run('''
        s = pp.Server(2)
        assert s.submit(square, (3,))() == 9
        pid = os.fork()
        if pid == 0:
            try:
                mine = pp.Server(2)
                res = [mine.submit(square, (i,))() for i in range(10)]
                mine.destroy()
                code = 0 if res == [i * i for i in range(10)] else 3
            except BaseException as e:
                print("child:", repr(e), flush=True)
                code = 4
            os._exit(code)
        _, st = os.waitpid(pid, 0)
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, st
        print(s.submit(square, (4,))())
        s.destroy()
    ''', timeout=60, tmp_path=tmp_path))
    assert out.split() == ["16"]


def test_multiprocessing_fork_child(tmp_path):
    out = check_ok(run('''
        def child(conn):
            try:
                conn.send(s.submit(abs, (-1,))())
            except RuntimeError as e:
                conn.send("RuntimeError: %s" % e)
            mine = pp.Server(1)
            conn.send(mine.submit(abs, (-7,))())
            mine.destroy()

        s = pp.Server(2)
        assert s.submit(abs, (-2,))() == 2
        ctx = multiprocessing.get_context("fork")
        a, b = ctx.Pipe()
        p = ctx.Process(target=child, args=(b,))
        p.start()
        assert a.poll(20), "no answer from the child"
        first = a.recv()
        assert isinstance(first, str) and first.startswith("RuntimeError: ") and \\
            "belongs to process %d" % os.getpid() in first, first
        assert a.poll(20)
        assert a.recv() == 7
        p.join(20)
        assert p.exitcode == 0, p.exitcode
        print(s.submit(abs, (-3,))())
        s.destroy()
    ''', timeout=60, tmp_path=tmp_path))
    assert out.split() == ["3"]


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_destroy_not_held_up_by_a_live_child(tmp_path, start):
    # A busy worker gets SIGTERM at once; idle ones must see EOF on their
    # pipe. A child holding copies of the pipes would keep them waiting for
    # the 1 s kill: destroy() returns only after every worker was reaped.
    out = check_ok(run('''
        s = pp.Server(3)
        assert sorted(s.submit(square, (i,))() for i in range(6)) == [0, 1, 4, 9, 16, 25]
        pids = s._worker_pids()
        assert wait_until(lambda: len(s._worker_pids()) == 3)
        pids = s._worker_pids()
        child, end_child = child_holding_fds()
        t = time.monotonic()
        s.destroy()
        took = time.monotonic() - t
        assert not any(alive(p) for p in pids), [p for p in pids if alive(p)]
        assert alive(child)
        os.close(end_child)
        os.waitpid(child, 0)
        print("%.3f" % took)
    ''', timeout=60, tmp_path=tmp_path, env_extra={"PPC_START": start}))
    took = float(out.split()[-1])
    assert took < 0.5, took


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_set_ncpus_shrink_stops_workers_while_a_child_lives(tmp_path, start):
    out = check_ok(run('''
        s = pp.Server(3)
        assert wait_until(lambda: len(s._worker_pids()) == 3)
        assert [s.submit(square, (i,))() for i in range(3)] == [0, 1, 4]
        before = s._worker_pids()
        child, end_child = child_holding_fds()
        s.set_ncpus(1)
        assert wait_until(lambda: len(s._worker_pids()) == 1, 10), s._worker_pids()
        gone = [p for p in before if p not in s._worker_pids()]
        assert len(gone) == 2
        # stopped for real: the processes exited, not only left the list
        assert wait_until(lambda: not any(alive(p) for p in gone), 5), gone
        assert alive(child)
        assert s.submit(square, (7,))() == 49
        s.destroy()
        os.close(end_child)
        os.waitpid(child, 0)
        print("ok")
    ''', timeout=60, tmp_path=tmp_path, env_extra={"PPC_START": start}))
    assert out.split() == ["ok"]


def test_child_holds_no_engine_fds(tmp_path):
    # What a fork inherits of the engine (worker pipes, epoll, eventfd) is
    # closed in the child at once.
    out = check_ok(run('''
        def fds():
            res = {}
            for name in os.listdir("/proc/self/fd"):
                try:
                    res[int(name)] = os.readlink("/proc/self/fd/%s" % name)
                except OSError:
                    pass
            return res
        base = fds()
        s = pp.Server(2)
        assert s.submit(square, (2,))() == 4
        engine = {fd: t for fd, t in fds().items() if fd not in base}
        assert len(engine) >= 6, engine  # 2 pipes per worker, epoll, eventfd
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            left = {fd: t for fd, t in fds().items() if fd in engine and engine[fd] == t}
            os.write(w, repr(left).encode())
            os._exit(0)
        os.close(w)
        got = os.read(r, 65536).decode()
        os.waitpid(pid, 0)
        s.destroy()
        print(got)
    ''', timeout=60, tmp_path=tmp_path))
    assert out.strip() == "{}", out
