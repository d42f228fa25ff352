"""Callbacks (DESIGN.md "Processes and threads").

Covers: callback(*callbackargs, result) is called once per job; all
callbacks run on one library-owned thread (the same thread ident, never the
main thread); they run in completion order (made deterministic with a gate
file that a later job waits for); wait() and wait(group) return only after
the callbacks of the awaited jobs ran; job() of a job with a callback
still returns the result; a callback that raises is logged on the "pp"
logger and the server keeps working; bound methods as callbacks (pp's
classic example); a job whose function raises does not call its callback;
job() or wait() inside a callback raises RuntimeError instead of hanging.
"""
import logging
import subprocess
import threading
import time

import pytest

import pp
import helpers_mod as H


def test_callback_gets_callbackargs_then_result(server):
    got = []
    server.submit(H.add, (2, 3), callback=lambda *a: got.append(a), callbackargs=("x", 1))
    server.wait()
    assert got == [("x", 1, 5)]


def test_callback_without_callbackargs(server):
    got = []
    server.submit(H.square, (9,), callback=got.append)
    server.wait()
    assert got == [81]


def test_callback_and_job_result(server):
    got = []
    job = server.submit(H.square, (5,), callback=got.append)
    assert job() == 25
    server.wait()
    assert got == [25]
    assert job() == 25


def test_job_finished_implies_callback_ran(server):
    got = []
    job = server.submit(H.tagged_sleep, ("t", 0.05), callback=lambda r: (time.sleep(0.1),
                                                                          got.append(r)))
    job.wait()
    assert job.finished
    assert got == ["t"]


def test_callbacks_on_one_library_thread(server):
    idents, names = [], []

    def cb(i, result):
        idents.append(threading.get_ident())
        names.append(threading.current_thread().name)

    for i in range(50):
        server.submit(H.square, (i,), callback=cb, callbackargs=(i,))
    server.wait()
    assert len(idents) == 50
    assert len(set(idents)) == 1
    assert idents[0] != threading.main_thread().ident
    assert idents[0] != threading.get_ident()
    # the same thread serves later jobs too
    server.submit(H.square, (1,), callback=cb, callbackargs=(0,))
    server.wait()
    assert len(set(idents)) == 1


def test_callbacks_from_several_groups_on_same_thread(server):
    idents = set()
    for g in ("a", "b", "c"):
        for i in range(5):
            server.submit(H.square, (i,), callback=lambda r: idents.add(threading.get_ident()),
                          group=g)
    server.wait()
    assert len(idents) == 1


def test_callbacks_in_completion_order(fresh_server, tmp_path):
    # "late" blocks until the callback of "early" has created the gate, so
    # "late" completes after "early" although it was submitted first.
    s = fresh_server(ncpus=2)
    gate = tmp_path / "gate"
    order = []

    def cb(tag, result):
        order.append(tag)
        if tag == "early":
            gate.touch()

    late = s.submit(H.wait_for_file, (str(gate), 30.0), callback=cb, callbackargs=("late",))
    early = s.submit(H.square, (3,), callback=cb, callbackargs=("early",))
    s.wait()
    assert order == ["early", "late"]
    assert early() == 9
    assert late()[1] is True


def test_wait_returns_after_callbacks_ran(server):
    got = []
    lock = threading.Lock()

    def slow_cb(i, result):
        time.sleep(0.005)
        with lock:
            got.append((i, result))

    for i in range(40):
        server.submit(H.square, (i,), callback=slow_cb, callbackargs=(i,))
    server.wait()
    assert sorted(got) == [(i, i * i) for i in range(40)]


def test_wait_group_returns_after_its_callbacks(server):
    got = {"g1": [], "g2": []}
    for g in ("g1", "g2"):
        for i in range(10):
            server.submit(H.square, (i,), group=g,
                          callback=lambda grp, r: (time.sleep(0.002), got[grp].append(r)),
                          callbackargs=(g,))
    server.wait("g1")
    assert sorted(got["g1"]) == [i * i for i in range(10)]
    server.wait("g2")
    assert sorted(got["g2"]) == [i * i for i in range(10)]


def test_bound_method_callback_with_lock(server):
    # pp's callback example: partial sums gathered by a method under a lock
    class Sum(object):
        def __init__(self):
            self.value = 0
            self.lock = threading.Lock()

        def add(self, value):
            with self.lock:
                self.value += value

    total = Sum()
    for i in range(100):
        server.submit(H.square, (i,), callback=total.add)
    server.wait()
    assert total.value == sum(i * i for i in range(100))


def test_callback_exception_is_logged_and_server_keeps_working(server, caplog, wait_until):
    caplog.set_level(logging.DEBUG, logger="pp")
    good = []

    def bad_cb(result):
        raise RuntimeError("callback failure %d" % result)

    server.submit(H.square, (4,), callback=bad_cb)
    server.wait()
    records = [r for r in caplog.records if r.name == "pp" and r.levelno >= logging.ERROR]
    assert records, caplog.text
    assert "callback failure 16" in caplog.text
    # later jobs and callbacks still work
    for i in range(5):
        server.submit(H.square, (i,), callback=good.append)
    server.wait()
    assert sorted(good) == [0, 1, 4, 9, 16]
    assert server.submit(H.add, (1, 1))() == 2


def test_callback_not_called_when_job_raises(server, caplog):
    caplog.set_level(logging.DEBUG, logger="pp")
    got = []
    job = server.submit(H.fail_with_value_error, ("nope",), callback=got.append)
    server.wait()
    assert got == []
    with pytest.raises(ValueError):
        job()


def test_callback_gets_none_when_job_raises_without_raise_exceptions(fresh_server, capsys):
    s = fresh_server(ncpus=1, raise_exceptions=False)
    got = []
    s.submit(H.fail_with_value_error, ("nope",), callback=got.append)
    s.wait()
    assert got == [None]


def test_callback_can_submit_more_jobs(server):
    # a callback may submit follow-up jobs; wait() covers them too
    got = []

    def cb(depth, result):
        got.append(result)
        if depth < 3:
            server.submit(H.square, (result,), callback=cb, callbackargs=(depth + 1,))

    server.submit(H.square, (2,), callback=cb, callbackargs=(1,))
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        server.wait()
    assert got == [4, 16, 256]


@pytest.mark.timeout(30)
def test_destroy_from_a_callback(fresh_server, tmp_path):
    s = fresh_server(ncpus=2)
    gate = tmp_path / "never-opened"
    got = []

    def cb(r):
        got.append(r)
        s.destroy()

    first = s.submit(H.square, (7,), callback=cb)
    # these wait on a gate nobody opens: they are pending when the callback
    # of the first job destroys the server
    blocked = [s.submit(H.wait_for_file, (str(gate), 25.0)) for _ in range(3)]
    assert first() == 49
    for j in blocked:
        with pytest.raises(pp.DestroyedServerError):
            j()
    assert got == [49]
    s.wait()
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (1,))


def test_many_callbacks(server):
    count = [0]

    def cb(r):
        count[0] += 1  # one thread runs callbacks: no lock needed

    for i in range(2000):
        server.submit(H.identity, (i,), callback=cb)
    server.wait()
    assert count[0] == 2000


# A callback that would block on the server forever (job() of a job that
# has a callback of its own, or wait()) gets a RuntimeError instead of
# deadlocking the one callback thread: DESIGN.md says the library never
# hangs silently. Run in a child so a hang cannot leave this process's
# servers stuck.

def _run_no_hang(run_python, source):
    try:
        return run_python(source, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the callback blocked the callback thread forever (deadlock)")


@pytest.mark.timeout(30)
def test_job_result_inside_callback_raises(run_python, ok):
    # Inside a callback, job() of a pending job that has a callback of its
    # own could never return (its callback needs this thread): it raises
    # RuntimeError at once. The inner job's callback still runs afterwards.
    out = ok(_run_no_hang(run_python, """
        import pp
        s = pp.Server(2)
        res = []

        def cb(r):
            inner = s.submit(pow, (2, 5), callback=lambda r: res.append(("inner", r)))
            try:
                res.append(("outer", r, inner()))
            except Exception as e:
                res.append(("raised", type(e).__name__, str(e)))

        s.submit(pow, (2, 2), callback=cb)
        s.wait()
        for r in res:
            print(repr(r))
        s.destroy()
    """))
    assert out.splitlines() == [
        repr(("raised", "RuntimeError",
              "a job with a callback was waited for from a callback: callbacks run on one "
              "thread, so its callback could never run; wait from another thread or submit it "
              "without a callback")),
        repr(("inner", 32)),
    ]


@pytest.mark.timeout(30)
def test_wait_inside_callback_raises(run_python, ok):
    # wait() inside a callback would wait for that callback's own job: it
    # raises RuntimeError at once, and the server goes on.
    out = ok(_run_no_hang(run_python, """
        import pp
        s = pp.Server(2)
        res = []

        def cb(r):
            try:
                s.wait()
                res.append("waited")
            except Exception as e:
                res.append(("raised", type(e).__name__, str(e)))

        s.submit(pow, (2, 2), callback=cb)
        s.wait()
        res.append(s.submit(pow, (3, 2))())
        for r in res:
            print(repr(r))
        s.destroy()
    """))
    assert out.splitlines() == [
        repr(("raised", "RuntimeError",
              "wait() called from a callback would wait for itself: callbacks run on one "
              "thread, and the jobs being waited for need it; wait from another thread")),
        "9",
    ]
