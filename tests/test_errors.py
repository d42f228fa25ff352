"""Every failure is an error the user sees, with its cause (DESIGN.md "Errors").

Covers the error table through real workers:
  * an exception inside the job: job() raises the same type, with a
    pp.RemoteTraceback (the worker's traceback text) as __cause__, every
    time job() is called; raise_exceptions=False prints pp's message and
    returns None; an exception that cannot travel back becomes
    pp.RemoteError naming its type;
  * a worker dying mid-job (os._exit, SIGKILL): pp.WorkerError naming the
    exit, other jobs complete, the pool is refilled, later jobs work, and a
    warning reaches the "pp" logger;
  * a missing module in `modules`: ImportError, quickly;
  * an unpicklable argument: error at submit, nothing queued;
  * submit after destroy, and jobs pending at destroy:
    pp.DestroyedServerError, nothing hangs;
  * ncpus=0 with no ppservers: pp.WorkerError, never a hang.
"""
import logging
import os
import pickle
import signal
import threading
import time

import pytest

import pp
from conftest import assert_nothing_pending
import helpers_mod as H


# --------------------------------------------------------------- exceptions in jobs

def test_exception_same_type_with_remote_traceback(server):
    job = server.submit(H.fail_with_value_error, ("bad value 17",))
    with pytest.raises(ValueError) as info:
        job()
    e = info.value
    assert str(e) == "bad value 17"
    assert isinstance(e.__cause__, pp.RemoteTraceback)
    text = str(e.__cause__)
    assert "Traceback (most recent call last)" in text
    assert "fail_with_value_error" in text
    assert "ValueError: bad value 17" in text
    assert "helpers_mod.py" in text


def test_exception_raised_every_time(server):
    job = server.submit(H.fail_with_value_error, ("again",))
    for _ in range(3):
        with pytest.raises(ValueError, match="again") as info:
            job()
        assert isinstance(info.value.__cause__, pp.RemoteTraceback)
    assert job.finished


def test_builtin_exception_types_travel(server):
    with pytest.raises(ZeroDivisionError):
        server.submit(lambda: 1 / 0)()
    with pytest.raises(KeyError):
        server.submit(lambda d: d["missing"], ({},))()
    with pytest.raises(TypeError):
        server.submit(len, (5,))()
    with pytest.raises(ValueError):
        server.submit(int, ("not a number",))()


def test_exception_in_local_function_names_it(server):
    def deeply_failing_local(x):
        return {}[x]

    with pytest.raises(KeyError) as info:
        server.submit(deeply_failing_local, ("nope",))()
    assert "deeply_failing_local" in str(info.value.__cause__)


def test_exception_that_cannot_be_pickled_is_remote_error(server):
    with pytest.raises(pp.RemoteError) as info:
        server.submit(H.raise_unpicklable, ("held a lock",))()
    msg = str(info.value)
    assert "UnpicklableError" in msg
    assert "held a lock" in msg
    assert isinstance(info.value.__cause__, pp.RemoteTraceback)
    assert "raise_unpicklable" in str(info.value.__cause__)


def test_exception_that_cannot_be_unpickled_names_its_type(server):
    # TwoArgError pickles in the worker but cannot be rebuilt in the client
    # (its __init__ needs two arguments): the user must still learn what was
    # raised and where, not a TypeError about __init__ arguments.
    with pytest.raises(pp.RemoteError) as info:
        server.submit(H.raise_two_arg_error)()
    e = info.value
    assert str(e) == "TwoArgError: first"
    assert isinstance(e.__cause__, pp.RemoteTraceback)
    assert "raise_two_arg_error" in str(e.__cause__)


def test_result_that_cannot_be_pickled(server):
    # the job returns a lock: the worker cannot send it; the user gets an error
    with pytest.raises(TypeError) as info:
        server.submit(lambda: threading.Lock(), modules=("threading",))()
    assert str(info.value) == "cannot pickle '_thread.lock' object"
    assert server.submit(H.square, (3,))() == 9


def test_raise_exceptions_false_prints_and_returns_none(fresh_server, capsys):
    s = fresh_server(ncpus=1, raise_exceptions=False)
    job = s.submit(H.fail_with_value_error, ("quiet failure",))
    capsys.readouterr()
    assert job() is None
    out = capsys.readouterr().out
    assert "An error has occured during the function execution" in out
    assert "fail_with_value_error" in out
    assert "ValueError: quiet failure" in out
    # the server keeps working
    assert s.submit(H.square, (4,))() == 16


def test_raise_exceptions_false_still_raises_worker_errors(fresh_server):
    s = fresh_server(ncpus=1, raise_exceptions=False)
    with pytest.raises(pp.WorkerError):
        s.submit(H.exit_with, (5,))()


# --------------------------------------------------------------- worker death

def warm_up(s, wait_until):
    """Run a job on every worker so all of them have started and answered."""
    n = s.get_ncpus()
    pids = {j() for j in [s.submit(H.pid_after, (0.3,)) for _ in range(n)]}
    assert len(pids) == n
    assert wait_until(lambda: len(s._worker_pids()) == n)


@pytest.mark.timeout(60)
def test_worker_exit_code(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    warm_up(s, wait_until)
    job = s.submit(H.exit_with, (3,))
    with pytest.raises(pp.WorkerError) as info:
        job()
    assert "exit code 3" in str(info.value)
    assert "died" in str(info.value)
    assert [s.submit(H.square, (i,))() for i in range(5)] == [0, 1, 4, 9, 16]
    assert wait_until(lambda: len(s._worker_pids()) == 2)


@pytest.mark.timeout(60)
def test_crashing_job_runs_once_and_server_survives(fresh_server, tmp_path, wait_until):
    # The job's worker is fresh (its first job): the crash is the job's, not
    # a failure to start; the job must not be run again elsewhere, and the
    # server must stay usable.
    count = tmp_path / "count"

    def crash(path):
        with open(path, "a") as f:
            f.write("ran\n")
        os._exit(3)

    s = fresh_server(ncpus=2)
    with pytest.raises(pp.WorkerError, match="exit code 3"):
        s.submit(crash, (str(count),), modules=("os",))()
    assert count.read_text().count("ran") == 1
    assert s.submit(H.square, (9,))() == 81
    assert wait_until(lambda: len(s._worker_pids()) == 2)


@pytest.mark.timeout(60)
def test_crash_with_restart_true(fresh_server):
    # restart=True: every job runs on a fresh worker
    s = fresh_server(ncpus=1, restart=True)
    for code in (3, 4, 5):
        with pytest.raises(pp.WorkerError, match="exit code %d" % code):
            s.submit(H.exit_with, (code,))()
    assert s.submit(H.square, (5,))() == 25


@pytest.mark.timeout(60)
def test_worker_killed_by_signal(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    warm_up(s, wait_until)
    job = s.submit(lambda: os.kill(os.getpid(), 9), modules=("os",))
    with pytest.raises(pp.WorkerError) as info:
        job()
    assert "signal 9" in str(info.value)
    assert s.submit(H.add, (1, 2))() == 3
    assert wait_until(lambda: len(s._worker_pids()) == 2)


@pytest.mark.timeout(60)
def test_worker_death_other_jobs_complete_and_pool_refilled(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    assert wait_until(lambda: len(s._worker_pids()) == 2)
    before = set(s._worker_pids())
    others = [s.submit(H.tagged_sleep, (i, 0.02)) for i in range(10)]
    dying = s.submit(H.kill_self, (signal.SIGKILL,))
    more = [s.submit(H.square, (i,)) for i in range(20)]
    with pytest.raises(pp.WorkerError) as info:
        dying()
    assert "signal 9" in str(info.value)
    assert [j() for j in others] == list(range(10))
    assert [j() for j in more] == [i * i for i in range(20)]
    assert wait_until(lambda: len(s._worker_pids()) == 2)
    after = set(s._worker_pids())
    assert len(after - before) >= 1  # a replacement was started
    assert s.get_ncpus() == 2
    pids = {s.submit(H.pid_after, (0.05,))() for _ in range(4)}
    assert pids <= after


@pytest.mark.timeout(60)
def test_several_worker_deaths(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    deaths = [s.submit(H.exit_with, (10 + i,)) for i in range(4)]
    for i, job in enumerate(deaths):
        with pytest.raises(pp.WorkerError, match="exit code %d" % (10 + i)):
            job()
    assert s.submit(H.square, (12,))() == 144
    assert wait_until(lambda: len(s._worker_pids()) == 2)


@pytest.mark.timeout(60)
def test_worker_death_logged_on_pp_logger(fresh_server, wait_until):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    log = logging.getLogger("pp")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        s = fresh_server(ncpus=1)
        with pytest.raises(pp.WorkerError):
            s.submit(H.exit_with, (7,))()

        def warned():
            return [r for r in records
                    if r.levelno >= logging.WARNING and "exit code 7" in r.getMessage()]

        assert wait_until(warned, 10)
        assert any(r.name == "pp" for r in warned())
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


@pytest.mark.timeout(60)
def test_idle_worker_killed_from_outside_is_replaced(fresh_server, wait_until, caplog):
    caplog.set_level(logging.WARNING, logger="pp")
    s = fresh_server(ncpus=2)
    warm_up(s, wait_until)
    victim = s._worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in s._worker_pids() and len(s._worker_pids()) == 2)
    assert [s.submit(H.square, (i,))() for i in range(4)] == [0, 1, 4, 9]
    assert wait_until(lambda: str(victim) in caplog.text)


def test_worker_error_is_runtime_error():
    assert issubclass(pp.WorkerError, RuntimeError)


# --------------------------------------------------------------- missing module

@pytest.mark.timeout(30)
def test_missing_module_raises_import_error(server):
    t0 = time.monotonic()
    job = server.submit(H.square, (3,), modules=("no_such_module_xyz",))
    with pytest.raises(ImportError) as info:
        job()
    assert "no_such_module_xyz" in str(info.value)
    assert isinstance(info.value, ModuleNotFoundError)
    assert time.monotonic() - t0 < 20  # did not hang
    # every job of that function reports it; other functions are unaffected
    with pytest.raises(ImportError):
        server.submit(H.square, (4,), modules=("no_such_module_xyz",))()
    assert server.submit(H.square, (4,))() == 16


@pytest.mark.timeout(30)
def test_missing_from_import_raises_import_error(server):
    with pytest.raises(ImportError):
        server.submit(H.square, (3,), modules=("from math import no_such_name_xyz",))()


# --------------------------------------------------------------- unpicklable arguments

@pytest.mark.parametrize("arg, exc", [(threading.Lock(), TypeError),
                                      (lambda: 0, pickle.PicklingError),
                                      ((x for x in range(3)), TypeError)],
                         ids=["lock", "lambda", "generator"])
def test_unpicklable_argument_fails_at_submit(server, arg, exc):
    with pytest.raises(exc):
        server.submit(H.identity, (arg,))
    assert_nothing_pending(server)
    assert server.submit(H.square, (5,))() == 25


def test_unpicklable_callbackargs_are_fine(server):
    # callbackargs never leave the client process
    lock = threading.Lock()
    got = []
    server.submit(H.square, (3,), callback=lambda lk, r: got.append((lk is lock, r)),
                  callbackargs=(lock,))
    server.wait()
    assert got == [(True, 9)]


# --------------------------------------------------------------- destroy

def test_submit_after_destroy(fresh_server):
    s = fresh_server(ncpus=1)
    s.destroy()
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (1,))
    with pytest.raises(pp.DestroyedServerError):
        pp.Template(s, H.square).submit(1)


@pytest.mark.timeout(30)
def test_jobs_pending_at_destroy_raise(fresh_server):
    s = fresh_server(ncpus=1)
    got = []
    running = s.submit(time.sleep, (30,))
    queued = [s.submit(time.sleep, (30,)) for _ in range(3)]
    with_cb = s.submit(time.sleep, (30,), callback=got.append)
    time.sleep(0.3)
    t0 = time.monotonic()
    s.destroy()
    assert time.monotonic() - t0 < 15  # destroy did not wait for the sleeps
    for job in [running] + queued + [with_cb]:
        with pytest.raises(pp.DestroyedServerError):
            job()
        assert job.finished
    assert got == []  # no callback for a job that never ran
    assert s.wait() is None


@pytest.mark.timeout(30)
def test_destroy_from_another_thread_wakes_waiter(fresh_server):
    s = fresh_server(ncpus=1)
    job = s.submit(time.sleep, (30,))
    timer = threading.Timer(0.5, s.destroy)
    timer.start()
    try:
        with pytest.raises(pp.DestroyedServerError):
            job()
    finally:
        timer.join()


@pytest.mark.timeout(30)
def test_wait_returns_when_destroyed_from_another_thread(fresh_server):
    s = fresh_server(ncpus=1)
    jobs = [s.submit(time.sleep, (30,)) for _ in range(3)]
    timer = threading.Timer(0.5, s.destroy)
    timer.start()
    try:
        s.wait()
    finally:
        timer.join()
    for job in jobs:
        assert job.finished
        with pytest.raises(pp.DestroyedServerError):
            job()


# --------------------------------------------------------------- no workers at all

@pytest.mark.timeout(30)
def test_ncpus_zero_fails_clearly(fresh_server):
    s = fresh_server(ncpus=0)
    assert s.get_ncpus() == 0
    job = s.submit(H.square, (2,))
    with pytest.raises(pp.WorkerError) as info:
        job()
    assert str(info.value) == ("no node can run jobs: the server has no local workers (ncpus=0) "
                               "and no remote nodes")
    s.wait()  # nothing left to wait for


@pytest.mark.timeout(30)
def test_ncpus_zero_then_set_ncpus(fresh_server):
    s = fresh_server(ncpus=0)
    with pytest.raises(pp.WorkerError):
        s.submit(H.square, (2,))()
    s.set_ncpus(1)
    assert s.submit(H.square, (3,))() == 9


@pytest.mark.timeout(30)
def test_set_ncpus_zero_with_queued_jobs_fails_them(fresh_server, tmp_path, wait_until):
    s = fresh_server(ncpus=1)
    gate, started = tmp_path / "gate", tmp_path / "started"
    running = s.submit(H.wait_for_file, (str(gate), 20.0, str(started)))
    assert wait_until(started.exists, 20)
    queued = [s.submit(H.square, (i,)) for i in range(3)]
    s.set_ncpus(0)
    gate.touch()
    # the running job finishes on its retiring worker; what is queued cannot
    # run anywhere any more: it fails instead of waiting forever
    assert running()[1] is True
    for job in queued:
        with pytest.raises(pp.WorkerError):
            job()
    s.set_ncpus(1)
    assert s.submit(H.square, (6,))() == 36
