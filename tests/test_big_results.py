"""Big results (1 MB and more) as the user's program sees them: a bytes
result is an ordinary bytes object of the client's own, copied once from
the worker (its memory, or its segment when the kernel refuses the read),
that nothing of ppc's reaches afterwards. Covered here: the object lives in
the client's ordinary memory; many results in flight, some kept and some
dropped; results used as arguments and in other shapes; a fork of the
client while a result lives; a worker killed while the client holds its
result; results outliving destroy(); tracemalloc started and stopped around
results (nothing of the process's allocator is touched); restart=True.

Numpy results, which are mapped rather than copied, are tested in
tests/test_shm.py."""
import gc
import hashlib
import os
import signal

import pytest

import pp
from conftest import fork_checker, mapping_of

MB = 1 << 20


def echo(x):
    return x


def nap(t):
    import time
    time.sleep(t)


def make(n, seed):
    import hashlib
    block = hashlib.sha256(str(seed).encode()).digest() * 32
    return (block * (n // len(block) + 1))[:n]


expect = make  # the same bytes, made here


def pair(n, seed):
    a = make(n, seed)
    return (a, a[::-1], {"k": make(n, seed + 1)})


def ready(fresh_server, n, **kw):
    """A server whose workers have heard that results may leave holes (the
    client tells them once it has probed them: jobs sent before may not)."""
    s = fresh_server(n, **kw)
    for _ in range(2 * n):
        s.submit(nap, (0.02,))
    s.wait()
    return s


def test_result_is_an_ordinary_object_of_ours(fresh_server):
    s = ready(fresh_server, 1)
    r = s.submit(make, (3 * MB + 5, 1))()
    assert type(r) is bytes and r == expect(3 * MB + 5, 1)
    line = mapping_of(id(r))
    # anonymous memory of ours, no file of the worker's behind it
    assert line is not None and "memfd:" not in line and "/proc/" not in line, line
    assert hash(r) == hash(bytes(r)) and (r + b"!")[-1:] == b"!"


def test_many_in_flight_some_kept_some_dropped(fresh_server):
    s = ready(fresh_server, 2)
    kept = {}
    for rnd in range(4):
        jobs = [(i, s.submit(make, (MB + 4096 * i + rnd, 100 * rnd + i))) for i in range(10)]
        for i, j in jobs:
            r = j()
            assert r == expect(MB + 4096 * i + rnd, 100 * rnd + i)
            if i % 3 == 0:
                kept[(rnd, i)] = r
        del r
        gc.collect()
    for (rnd, i), r in kept.items():
        assert r == expect(MB + 4096 * i + rnd, 100 * rnd + i), (rnd, i)


def test_result_as_argument_and_other_shapes(fresh_server):
    s = ready(fresh_server, 2)
    n = 2 * MB + 3
    r = s.submit(make, (n, 5))()
    assert s.submit(echo, (r,))() == expect(n, 5)
    a, b, d = s.submit(pair, (n, 6))()
    assert a == expect(n, 6) and b == expect(n, 6)[::-1] and d["k"] == expect(n, 7)
    (t,) = s.submit(echo, ((r,),))()
    assert t == r


def test_client_fork_keeps_what_it_saw(fresh_server):
    s = ready(fresh_server, 1)
    n = 4 * MB
    r = s.submit(make, (n, 8))()
    want = hashlib.sha256(expect(n, 8)).hexdigest()
    child_ok = fork_checker(lambda: hashlib.sha256(r).hexdigest() == want)
    # the parent drops its result and makes the worker reuse its memory
    del r
    gc.collect()
    for k in range(3):
        assert s.submit(make, (n, 9 + k))() == expect(n, 9 + k)
    assert child_ok(), "the forked child saw changed data"


def test_worker_killed_while_result_is_held(fresh_server):
    s = ready(fresh_server, 1)
    n = 3 * MB
    r = s.submit(make, (n, 12))()
    pid = s.submit(os.getpid)()
    os.kill(pid, signal.SIGKILL)
    assert r == expect(n, 12)
    del r
    gc.collect()
    # the replacement worker serves
    assert s.submit(make, (n, 13))() == expect(n, 13)


def test_results_outlive_the_server(fresh_server):
    s = ready(fresh_server, 1)
    r = s.submit(make, (2 * MB, 14))()
    s.destroy()
    assert r == expect(2 * MB, 14)
    del r
    gc.collect()


def test_tracemalloc_around_results(run_python):
    # a tool that installs its allocator hooks and later restores the ones
    # it saw (tracemalloc, profilers) must find nothing of ours in between
    res = run_python("""
        import gc, tracemalloc
        import pp

        def make(n, c):
            return bytes([c]) * n

        s = pp.Server(1)
        keep = s.submit(make, (2 << 20, 1))()
        tracemalloc.start()
        more = [s.submit(make, (2 << 20, 2 + i))() for i in range(3)]
        del keep
        tracemalloc.stop()
        gc.collect()
        assert all(m == bytes([2 + i]) * (2 << 20) for i, m in enumerate(more))
        del more
        tracemalloc.start()
        last = s.submit(make, (2 << 20, 9))()
        tracemalloc.stop()
        del last
        gc.collect()
        s.destroy()
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_restart_results(fresh_server):
    s = fresh_server(1, restart=True)
    rs = [s.submit(make, (2 * MB, i))() for i in range(3)]
    assert all(r == expect(2 * MB, i) for i, r in enumerate(rs))
