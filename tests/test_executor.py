"""pp.Executor through real workers: a concurrent.futures.Executor whose
futures work with the stdlib's as_completed/wait and asyncio; kwargs;
errors; several submitting threads; map with chunks, timeout and
buffersize; shutdown (wait, cancel_futures) and RuntimeError after it;
__main__ functions with their top-level imports."""
import asyncio
import concurrent.futures as cf
import threading
import time

import pytest

import pp
import futures_jobs as F


@pytest.mark.timeout(30)
def test_submit_futures_stdlib_interop():
    with pp.Executor(2) as ex:
        assert isinstance(ex, cf.Executor)
        f = ex.submit(F.add, 2, b=5)
        assert isinstance(f, cf.Future) and f.result(timeout=10) == 7
        fs = [ex.submit(F.square, i) for i in range(200)]
        assert sorted(x.result() for x in cf.as_completed(fs, timeout=20)) == \
            sorted(i * i for i in range(200))
        done, not_done = cf.wait(fs, timeout=20)
        assert len(done) == 200 and not not_done
        bad = ex.submit(F.raise_counted, "/dev/null")
        assert isinstance(bad.exception(timeout=10), ValueError)
        assert ex.submit(lambda x: x - 1, 10).result() == 9

        async def main():
            loop = asyncio.get_running_loop()
            a = await loop.run_in_executor(ex, F.square, 12)
            b = await asyncio.wrap_future(ex.submit(F.square, 3))
            return a, b
        assert asyncio.run(main()) == (144, 9)


@pytest.mark.timeout(40)
def test_several_threads_submit_at_once():
    with pp.Executor(2) as ex:
        errors = []

        def worker(k):
            try:
                fs = [ex.submit(F.add, k, i) for i in range(300)]
                assert [f.result(timeout=30) for f in fs] == [k + i for i in range(300)]
            except BaseException as e:  # reported below
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(40)
        assert not errors


@pytest.mark.timeout(40)
def test_map_timeout_buffersize_and_shutdown():
    ex = pp.Executor(2)
    assert list(ex.map(F.add, range(5), range(5))) == [0, 2, 4, 6, 8]
    assert list(ex.map(F.inc, range(100000))) == list(range(1, 100001))
    assert list(ex.map(F.inc, range(50), buffersize=4)) == list(range(1, 51))
    it = ex.map(F.slow_id, [0, 1], [5, 5], timeout=0.3, chunksize=1)
    with pytest.raises(cf.TimeoutError):
        list(it)
    # cancel_futures: queued futures are cancelled, the running ones finish
    running = [ex.submit(F.slow_id, i, 0.5) for i in range(2)]
    time.sleep(0.2)
    queued = [ex.submit(F.slow_id, i, 0.5) for i in range(10)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.result() for f in running] == [0, 1]
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError):
        ex.submit(F.inc, 1)
    with pytest.raises(RuntimeError):
        ex.map(F.inc, [1])
    with pytest.raises(ValueError):
        pp.Executor(0)


@pytest.mark.timeout(30)
def test_future_cancel_follows_job():
    with pp.Executor(1) as ex:
        first = ex.submit(F.slow_id, 1, 0.6)
        time.sleep(0.2)
        later = ex.submit(F.slow_id, 2, 0.1)
        assert first.running() and not first.cancel()
        assert later.cancel() and later.cancelled()
        with pytest.raises(cf.CancelledError):
            later.result()
        assert first.result(timeout=10) == 1


@pytest.mark.timeout(30)
def test_main_functions_with_top_level_imports(run_python, ok):
    out = ok(run_python("""
        import math
        import json as j
        from os.path import join
        import pp

        class Box:
            def __init__(self, v):
                self.v = v

        def work(x, box=None):
            return math.sqrt(x) + (box.v if box else 0), j.dumps([x]), join("a", "b")

        if __name__ == "__main__":
            # each in fresh workers: an import one job ran must not hide another's
            with pp.Executor(1) as ex:
                print(ex.submit(work, 16).result())
            with pp.Executor(1) as ex:
                print(ex.submit(work, 9, box=Box(1)).result()[0])
            with pp.Executor(1) as ex:
                print(list(ex.map(work, [4]))[0][0])
    """))
    assert out.splitlines()[0] == "(4.0, '[16]', 'a/b')"
    assert out.split()[-2:] == ["4.0", "2.0"]


@pytest.mark.timeout(30)
def test_future_result_paths():
    """result() in each state: in time, with a timeout that passes, after
    the job raised, after cancel, watched by a callback and by the stdlib's
    wait, and many futures (the Executor's list pruned)."""
    with pp.Executor(1) as ex:
        slow = ex.submit(F.slow_id, 1, 0.5)
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0.05)
        assert slow.result(timeout=10) == 1 and slow.done() and not slow.running()
        bad = ex.submit(F.fail_at, 3, 3)
        with pytest.raises(KeyError):
            bad.result()
        assert isinstance(bad.exception(), KeyError)
        block = ex.submit(F.slow_id, 0, 0.4)
        queued = ex.submit(F.inc, 1)
        assert queued.cancel()
        with pytest.raises(cf.CancelledError):
            queued.result()
        seen = []
        watched = ex.submit(F.inc, 41)
        watched.add_done_callback(lambda f: seen.append(f.result()))
        assert watched.result() == 42
        assert block.result() == 0
        for _ in range(100):
            if seen:
                break
            time.sleep(0.02)
        assert seen == [42]
        waited = ex.submit(F.slow_id, 7, 0.2)
        done, _ = cf.wait([waited], timeout=10)
        assert done == {waited} and waited.result() == 7
        many = [ex.submit(F.inc, i) for i in range(3000)]
        assert [f.result() for f in many] == list(range(1, 3001))
        # the futures kept for shutdown: a pruning (due by the time the list
        # has doubled) drops the done ones
        more = [ex.submit(F.inc, i) for i in range(7000)]
        kept = set(map(id, ex._kept))
        assert not kept & set(map(id, many)) and len(kept) <= 7001
        assert [f.result() for f in more] == list(range(1, 7001))
        with pytest.raises(TypeError):
            ex.submit()


@pytest.mark.timeout(30)
def test_futures_read_by_result_still_notify():
    """result() returns the job's value and leaves the future to be settled
    later: the stdlib's wait, as_completed and callbacks still see each such
    future finished, at once and once, also from another thread."""
    with pp.Executor(2) as ex:
        fs = [ex.submit(F.inc, i) for i in range(200)]
        assert [f.result() for f in fs] == list(range(1, 201))
        seen = []
        fs[0].add_done_callback(seen.append)
        assert seen == [fs[0]]  # already done: called at once, once
        t0 = time.monotonic()
        done, not_done = cf.wait(fs[:100], timeout=20)
        assert len(done) == 100 and not not_done
        got = []
        th = threading.Thread(target=lambda: got.extend(cf.as_completed(fs[100:], timeout=20)))
        th.start()
        th.join(25)
        assert sorted(f.result() for f in got) == list(range(101, 201))
        assert time.monotonic() - t0 < 10  # notified, not timed out
        assert all(f.done() and not f.cancelled() for f in fs)
        assert "finished" in repr(fs[5]) and seen == [fs[0]]


@pytest.mark.timeout(30)
def test_executor_core_refuses_misuse():
    """The C base of pp.Executor checks what it is given: no submit before
    set-up, one set-up only, a Future class without the _job slot refused."""
    from pp import _ppc
    core = _ppc._ExecutorCore(1, x=2)  # arguments go to Executor.__init__
    with pytest.raises(RuntimeError):
        core.submit(abs, -1)
    with pytest.raises(TypeError):
        core._setup(abs, cf.Future)  # no _job slot
    with pytest.raises(TypeError):
        core._setup(abs, 3)
    with pp.Executor(1) as ex:
        with pytest.raises(RuntimeError):
            ex._setup(ex.server.submit, ex._Future)
        assert ex.submit(F.inc, 1).result(timeout=10) == 2
    assert core._close() == [] and core._closed
