"""Jobs as futures through real workers (and a real ppserver on loopback):
result/exception timeouts, done/running/cancelled, cancel while queued
under load, kill of a running job (worker replaced), submit's timeout and
retries locally and on a node, done callbacks, pp.wait/pp.as_completed,
and asyncio awaiting thousands of jobs without a thread per job."""
import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

import pp
import futures_jobs as F
from clusterutil import start_ppserver  # noqa: F401 (fixture)
from conftest import _wait_until as wait_until

SECRET = "futures-secret"


@pytest.mark.timeout(30)
def test_result_exception_states():
    with pp.Server(2) as s:
        j = s.submit(F.sleep_pid, (0.3,))
        with pytest.raises(cf.TimeoutError):
            j.result(timeout=0.01)
        assert not j.done()
        wait_until(j.running)
        assert isinstance(j.result(timeout=10), int)
        assert j.done() and not j.running() and not j.cancelled()
        assert j.exception() is None
        b = s.submit(F.raise_counted, (os.devnull,))
        e = b.exception(timeout=10)
        assert isinstance(e, ValueError)
        with pytest.raises(ValueError):
            b.result()
        assert j() == j.result()  # job() unchanged


@pytest.mark.timeout(30)
def test_cancel_queued_under_load_never_runs(tmp_path):
    with pp.Server(2) as s:
        blockers = [s.submit(F.sleep_pid, (0.6,)) for _ in range(2)]
        wait_until(lambda: all(b.running() for b in blockers))
        marks = [str(tmp_path / ("m%d" % i)) for i in range(20)]
        jobs = [s.submit(F.mark_and_sleep, (m, 0.0)) for m in marks]
        cancelled = [j.cancel() for j in jobs[::2]]
        assert all(cancelled)
        seen = []
        jobs[0].add_done_callback(seen.append)  # already cancelled: runs at once
        assert seen == [jobs[0]]
        for j in jobs[::2]:
            assert j.cancelled() and j.done()
            with pytest.raises(cf.CancelledError):
                j.result()
            with pytest.raises(cf.CancelledError):
                j.exception()
        # the others keep completing
        assert [j.result(timeout=20) for j in jobs[1::2]] == marks[1::2]
        for b in blockers:
            b.result(timeout=20)
        s.wait()
        for m in marks[::2]:
            assert not os.path.exists(m), "a cancelled job ran"
        # too late once it ran
        assert not jobs[1].cancel() and not jobs[1].cancelled()


@pytest.mark.timeout(30)
def test_kill_running_job_replaces_worker_others_complete():
    with pp.Server(2) as s:
        victim = s.submit(F.sleep_pid, (60,))
        wait_until(victim.running)
        time.sleep(0.2)
        others = [s.submit(F.sleep_pid, (0.01, i)) for i in range(40)]
        t0 = time.monotonic()
        assert victim.kill()
        with pytest.raises(cf.CancelledError):
            victim.result(timeout=10)
        assert time.monotonic() - t0 < 5
        assert victim.cancelled() and victim.done()
        assert sorted(o.result(timeout=20)[0] for o in others) == list(range(40))
        # the replacement worker serves: two jobs run side by side again
        pair = [s.submit(F.sleep_pid, (0.5,)) for _ in range(2)]
        assert len({p.result(timeout=20) for p in pair}) == 2
        assert not victim.kill()  # done already


@pytest.mark.timeout(30)
def test_timeout_raises_builtin_timeout_error_and_worker_replaced():
    with pp.Server(1) as s:
        first_pid = s.submit(F.sleep_pid, (0,)).result()
        j = s.submit(F.sleep_pid, (60,), timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as ei:
            j.result()
        assert isinstance(ei.value, cf.TimeoutError)
        assert 0.4 < time.monotonic() - t0 < 5
        assert not j.cancelled()
        # a job in time is untouched; the worker was replaced
        assert s.submit(F.sleep_pid, (0.05,), timeout=10).result() != first_pid
        with pytest.raises(ValueError):
            s.submit(F.sleep_pid, (1,), timeout=0)
        with pytest.raises(TypeError):
            s.submit(F.sleep_pid, (1,), (), (), None, (), "default", None, 5)  # keyword only


@pytest.mark.timeout(40)
def test_retries_rerun_after_worker_death_and_exhaust(tmp_path):
    with pp.Server(2) as s:
        c1 = str(tmp_path / "c1")
        assert s.submit(F.die_until, (c1, 2), retries=2).result(timeout=20) == 3
        c2 = str(tmp_path / "c2")
        with pytest.raises(pp.WorkerError):
            s.submit(F.die_until, (c2, 5), retries=1).result(timeout=20)
        with open(c2) as f:
            assert f.read() == "2"  # ran once plus one retry
        # an exception raised by the function is not retried
        c3 = str(tmp_path / "c3")
        with pytest.raises(ValueError):
            s.submit(F.raise_counted, (c3,), retries=3).result(timeout=20)
        with open(c3) as f:
            assert f.read() == "x"


@pytest.mark.timeout(40)
def test_remote_timeout_kill_and_retries(start_ppserver, tmp_path):  # noqa: F811
    node = start_ppserver(workers=2, secret=SECRET)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        assert c.submit(F.sleep_pid, (0,)).result(timeout=20) in node.workers()
        j = c.submit(F.sleep_pid, (60,), timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            j.result(timeout=20)
        assert time.monotonic() - t0 < 10
        k = c.submit(F.sleep_pid, (60,))
        wait_until(k.running)
        time.sleep(0.3)
        assert k.kill()
        with pytest.raises(cf.CancelledError):
            k.result(timeout=20)
        # the node's workers were replaced and serve on
        wait_until(lambda: len(node.workers()) == 2)
        pids = {c.submit(F.sleep_pid, (0.3,)).result(timeout=20) for _ in range(1)}
        assert pids <= set(node.workers())
        counter = str(tmp_path / "rc")
        assert c.submit(F.die_until, (counter, 1), retries=1).result(timeout=20) == 2


@pytest.mark.timeout(30)
def test_done_callbacks_once_and_with_pp_callback():
    with pp.Server(2) as s:
        calls = []
        lock = threading.Lock()

        def cb(job):
            with lock:
                calls.append(job.result())

        jobs = [s.submit(F.square, (i,)) for i in range(50)]
        for j in jobs:
            j.add_done_callback(cb)
        s.wait()
        wait_until(lambda: len(calls) == 50)
        assert sorted(calls) == [i * i for i in range(50)]
        jobs[0].add_done_callback(cb)  # already done: at once
        assert len(calls) == 51
        got = []
        j = s.submit(F.square, (7,), callback=got.append)
        j.add_done_callback(lambda job: got.append(("done", job.result())))
        j.wait()
        wait_until(lambda: len(got) == 2)
        assert got == [49, ("done", 49)]


@pytest.mark.timeout(30)
def test_wait_and_as_completed():
    with pp.Server(3) as s:
        fast = s.submit(F.sleep_pid, (0.05, "fast"))
        slow = s.submit(F.sleep_pid, (3, "slow"))
        r = pp.wait([fast, slow], timeout=2, return_when=pp.FIRST_COMPLETED)
        assert r.done == {fast} and r.not_done == {slow}
        assert type(r).__name__ == "DoneAndNotDoneFutures"
        bad = s.submit(F.raise_counted, (os.devnull,))
        r = pp.wait([bad, slow], return_when=pp.FIRST_EXCEPTION)
        assert bad in r.done
        order = [f.result()[0] for f in pp.as_completed(
            [s.submit(F.sleep_pid, (0.6, "b")), s.submit(F.sleep_pid, (0.05, "a"))])]
        assert order == ["a", "b"]
        with pytest.raises(cf.TimeoutError):
            list(pp.as_completed([s.submit(F.sleep_pid, (5,))], timeout=0.2))
        r = pp.wait([slow])
        assert r.done == {slow} and not r.not_done


@pytest.mark.timeout(60)
def test_asyncio_thousands_of_jobs_no_thread_per_job():
    with pp.Server(2) as s:
        async def main():
            jobs = [s.submit(F.add, (i, 1)) for i in range(3000)]
            peak = [threading.active_count()]

            async def watch():
                while True:
                    peak[0] = max(peak[0], threading.active_count())
                    await asyncio.sleep(0.005)
            w = asyncio.ensure_future(watch())
            out = await asyncio.gather(*jobs)
            one = await s.submit(F.square, (5,))
            w.cancel()
            with pytest.raises(ValueError):
                await s.submit(F.raise_counted, (os.devnull,))
            return out, one, peak[0]

        before = threading.active_count()
        out, one, peak = asyncio.run(main())
        assert out == [i + 1 for i in range(3000)] and one == 25
        assert peak <= before + 2


@pytest.mark.timeout(40)
def test_kill_frames_reach_only_the_senders_jobs(start_ppserver):  # noqa: F811
    """A second authenticated client sending KILL for every id (and KILL
    before authenticating) stops none of the first client's jobs."""
    from clusterutil import HDR, Wire, frame
    F_KILL = 34
    node = start_ppserver(workers=2, secret=SECRET)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        jobs = [c.submit(F.sleep_pid, (1.0, i)) for i in range(4)]
        wait_until(lambda: any(j.running() for j in jobs))
        w = Wire(node.port)
        w.handshake(SECRET)
        for i in range(0, 2000):
            w.send(frame(F_KILL, b"", fid=i))
        w.send(frame(F_KILL, b"x" * 100, fid=1))
        w.send(HDR.pack(0, 2 ** 64 - 1, F_KILL, 255, 65535, 2 ** 32 - 1))
        raw = Wire(node.port)
        raw.send(frame(F_KILL, b"", fid=1))  # before the handshake: refused
        assert raw.closed_by_peer(5)
        raw.close()
        assert sorted(j.result(timeout=20)[0] for j in jobs) == [0, 1, 2, 3]
        w.close()
        assert c.submit(F.sleep_pid, (0, "after")).result(timeout=20)[0] == "after"
