"""Server.map / imap / imap_unordered through real workers: a million
items, several iterables, explicit and automatic chunks, errors, an
endless input streamed and stopped early (nothing left running, input
read a bounded amount ahead), progress display, pp.progress(jobs)."""
import itertools
import os
import time

import pytest

import pp
import futures_jobs as F
from clusterutil import start_ppserver  # noqa: F401 (fixture)
from conftest import _wait_until as wait_until


@pytest.mark.timeout(60)
def test_map_million_items():
    with pp.Server(2) as s:
        out = s.map(F.inc, range(1000000))
        assert len(out) == 1000000 and out[0] == 1 and out[-1] == 1000000
        assert out == list(range(1, 1000001))


@pytest.mark.timeout(30)
def test_map_iterables_chunks_lambdas_and_errors():
    with pp.Server(2) as s:
        assert s.map(F.add, range(10), range(100, 105)) == [100, 102, 104, 106, 108]
        assert s.map(lambda x: x * 3, range(50), chunksize=7) == [x * 3 for x in range(50)]
        assert s.map(F.inc, []) == []
        with pytest.raises(ValueError):
            s.map(F.inc, range(3), chunksize=0)
        with pytest.raises(KeyError):
            s.map(F.fail_at, range(100), [57] * 100)
        it = s.imap(F.fail_at, range(100), [57] * 100, chunksize=10)
        assert list(itertools.islice(it, 50)) == list(range(50))
        with pytest.raises(KeyError):
            list(it)
        assert sorted(s.imap_unordered(F.inc, range(1000))) == list(range(1, 1001))
        # results of imap_unordered come as chunks complete
        first = next(iter(s.imap_unordered(F.slow_id, [0.8, 0.01], [0.8, 0.01], chunksize=1)))
        assert first == 0.01
        s.wait()


@pytest.mark.timeout(60)
def test_endless_imap_streams_and_stops_early():
    consumed = [0]

    def source():
        for i in itertools.count():
            consumed[0] = i + 1
            yield i

    with pp.Server(2) as s:
        it = s.imap(F.inc, source())
        got = list(itertools.islice(it, 200000))
        assert got == list(range(1, 200001))
        ahead = consumed[0] - 200000
        assert 0 <= ahead <= 5 * (1 << 16)  # a bounded number of chunks in flight
        it.close()
        # nothing left running or queued: the workers take a new job at once
        wait_until(lambda: s._active_tasks() == 0, timeout=10)
        t0 = time.monotonic()
        assert s.submit(F.inc, (1,))() == 2
        assert time.monotonic() - t0 < 5
        # slow items: stopping early kills the running chunks
        slow = s.imap(F.slow_id, itertools.count(), itertools.repeat(30), chunksize=1)
        assert next(iter(s.imap(F.inc, [1]))) == 2
        del slow  # never started: a generator that never ran submits nothing
        slow = s.imap(F.slow_id, itertools.count(), itertools.repeat(0.01), chunksize=1)
        assert next(slow) == 0
        slow.close()
        wait_until(lambda: s._active_tasks() == 0, timeout=10)


@pytest.mark.timeout(30)
def test_map_of_main_function_and_progress(run_python, ok):
    out = ok(run_python("""
        import sys
        import pp

        def cube(x):
            return x ** 3

        if __name__ == "__main__":
            sys.modules["tqdm"] = None  # the plain display, even where tqdm is installed
            with pp.Server(2) as s:
                r = s.map(cube, range(300), progress=True)
                print(r == [x ** 3 for x in range(300)])
                jobs = [s.submit(cube, (i,)) for i in range(20)]
                print([j() for j in pp.progress(jobs)] == [i ** 3 for i in range(20)])
    """))
    assert out.split() == ["True", "True"]


@pytest.mark.timeout(30)
def test_progress_line_counts_items(run_python):
    proc = run_python("""
        import sys
        import pp
        sys.modules["tqdm"] = None
        with pp.Server(2) as s:
            s.map(abs, range(-500, 0), progress=True)
            list(pp.progress([s.submit(abs, (i,)) for i in range(7)]))
    """)
    assert proc.returncode == 0, proc.stderr
    last = [seg for seg in proc.stderr.replace("\n", "\r").split("\r") if seg.strip()]
    assert any("500/500" in x for x in last), proc.stderr
    assert any("7/7" in x for x in last), proc.stderr


@pytest.mark.timeout(30)
def test_progress_uses_tqdm_when_installed(run_python):
    pytest.importorskip("tqdm", reason="tqdm is not installed for this Python")
    proc = run_python("""
        import pp
        with pp.Server(2) as s:
            assert s.map(abs, range(-300, 0), progress=True) == list(range(300, 0, -1))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "300/300" in proc.stderr and "|" in proc.stderr, proc.stderr  # tqdm's bar


@pytest.mark.timeout(40)
def test_map_and_executor_on_a_ppserver(start_ppserver):  # noqa: F811
    node = start_ppserver(workers=2, secret="map-secret")
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret="map-secret") as c:
        assert c.map(F.inc, range(20000)) == list(range(1, 20001))
        assert c.map(lambda x: -x, range(100), chunksize=9) == [-x for x in range(100)]
        assert c.get_stats()[node.addr].njobs > 0
    with pp.Executor(0, ppservers=(node.addr,), secret="map-secret") as ex:
        assert ex.submit(F.add, 1, b=2).result(timeout=20) == 3
        assert list(ex.map(F.square, range(50))) == [x * x for x in range(50)]
