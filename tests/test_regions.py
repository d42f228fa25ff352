"""Big results mapped, not copied (src/py/region.c): a worker's big objects
live in shared-memory regions; a bytes result alone in one is mapped by the
client, which makes the object its own, and given back when the client
frees it, so the worker reuses the region warm.

Covered here: the result really is a mapping of the worker's region; the
region comes back and is reused; data stays right with many results in
flight, some kept and some dropped; results used as arguments and in any
other shape; a fork of the client and a fork inside a worker each keep the
data they saw at the fork while the other side reuses memory; a worker
killed while the client holds its result; tracemalloc tracing before the
first result (the client copies) and started afterwards; the feature off
(PPC_REGIONS=0) and restart=True (no regions)."""
import gc
import hashlib
import os
import signal

import pytest

import pp

MB = 1 << 20


def echo(x):
    return x


def nap(t):
    import time
    time.sleep(t)


def make(n, seed):
    # a new bytes object made in the worker: in a region of its own
    import hashlib
    block = hashlib.sha256(str(seed).encode()).digest() * 32
    return (block * (n // len(block) + 1))[:n]


def expect(n, seed):
    block = hashlib.sha256(str(seed).encode()).digest() * 32
    return (block * (n // len(block) + 1))[:n]


def pair(n, seed):
    a = make(n, seed)
    return (a, a[::-1], {"k": make(n, seed + 1)})


def worker_regions():
    """The region stats of the module running this worker's loop."""
    import sys
    out = {}
    for name in ("_ppcw", "pp._ppcw", "pp._ppc"):
        m = sys.modules.get(name)
        if m is not None and hasattr(m, "_region_stats"):
            st = m._region_stats()
            if st["made"] or not out:
                out = st
    return out


def fork_in_worker(n):
    """Fork while big objects of ours live in regions; the parent then frees
    one and makes new ones of the same size (which would reuse its region)
    and writes into a bytearray; the child must still see what was there at
    the fork. Returns the child's exit status."""
    import hashlib
    import os
    big = os.urandom(n)
    ba = bytearray(n)
    h = hashlib.sha256(big).hexdigest()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        ok = hashlib.sha256(big).hexdigest() == h and ba[:4] == b"\0\0\0\0"
        os._exit(0 if ok else 1)
    del big
    others = [b"\xff" * n for _ in range(3)]
    ba[:4] = b"abcd"
    os.write(w, b"g")
    _, st = os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return os.WEXITSTATUS(st), len(others)


def ready(fresh_server, n, **kw):
    """A server whose workers have heard that results may leave holes (the
    client tells them once it has probed them: jobs sent before may not)."""
    s = fresh_server(n, **kw)
    for _ in range(2 * n):
        s.submit(nap, (0.02,))
    s.wait()
    return s


def regions(s):
    return s._data_stats()["regions"]


def region_of(obj):
    """The /proc/self/maps line whose mapping holds obj, or None."""
    a = id(obj)
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= a < hi:
                return line.strip()
    return None


def test_result_is_a_mapping_of_the_workers_region(fresh_server):
    s = ready(fresh_server, 1)
    before = regions(s)["adopted"]
    r = s.submit(make, (3 * MB + 5, 1))()
    assert r == expect(3 * MB + 5, 1)
    assert type(r) is bytes and len(r) == 3 * MB + 5
    assert regions(s)["adopted"] == before + 1
    line = region_of(r)
    assert line and "memfd:ppc-region" in line, line
    # an ordinary bytes object in every way
    assert hash(r) == hash(bytes(r)) and r[5:9] == expect(3 * MB + 5, 1)[5:9]
    assert (r + b"!")[-1:] == b"!" and r.count(b"\x00") == expect(3 * MB + 5, 1).count(b"\x00")
    del r


def test_region_comes_back_and_is_reused(fresh_server, wait_until):
    s = ready(fresh_server, 1)
    n = 4 * MB
    r = s.submit(make, (n, 2))()
    assert r == expect(n, 2)
    w0 = s.submit(worker_regions)()
    assert w0["made"] >= 1 and w0["lent"] >= 1
    live = regions(s)["adopted_live"]
    del r
    gc.collect()
    assert regions(s)["adopted_live"] == live - 1
    # the worker gets the region back and makes the next result in it
    assert wait_until(lambda: s.submit(worker_regions)()["pooled"] >= 1)
    r2 = s.submit(make, (n, 3))()
    assert r2 == expect(n, 3)
    w1 = s.submit(worker_regions)()
    assert w1["reused"] > w0["reused"] and w1["made"] == w0["made"]


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
    assert regions(s)["adopted"] >= 40


def test_result_as_argument_and_other_shapes(fresh_server):
    s = ready(fresh_server, 2)
    n = 2 * MB + 3
    r = s.submit(make, (n, 5))()
    # an adopted result sent back to a worker: read from our mapping
    assert s.submit(echo, (r,))() == expect(n, 5)
    a, b, d = s.submit(pair, (n, 6))()
    assert a == expect(n, 6) and b == expect(n, 6)[::-1] and d["k"] == expect(n, 7)
    (t,) = s.submit(echo, ((r,),))()
    assert t == r


def test_client_fork_keeps_what_it_saw(fresh_server, wait_until):
    s = ready(fresh_server, 1)
    n = 4 * MB
    r = s.submit(make, (n, 8))()
    want = hashlib.sha256(expect(n, 8)).hexdigest()
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.read(rd, 1)
            ok = hashlib.sha256(r).hexdigest() == want
        finally:
            os._exit(0 if ok else 1)
    # the parent gives the region back; the worker must not reuse it, since
    # the child still maps it
    del r
    gc.collect()
    for k in range(3):
        assert s.submit(make, (n, 9 + k))() == expect(n, 9 + k)
    os.write(wr, b"g")
    _, st = os.waitpid(pid, 0)
    os.close(rd)
    os.close(wr)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, "the forked child saw changed data"


def test_fork_inside_a_worker(fresh_server):
    s = ready(fresh_server, 1)
    status, _ = s.submit(fork_in_worker, (3 * MB,))()
    assert status == 0, "a worker's child saw data its parent changed after the fork"
    # the worker goes on lending
    assert s.submit(make, (2 * MB, 11))() == expect(2 * MB, 11)


def test_worker_killed_while_result_is_held(fresh_server):
    s = ready(fresh_server, 1)
    n = 3 * MB
    r = s.submit(make, (n, 12))()
    pid = s.submit(os.getpid)()
    os.kill(pid, signal.SIGKILL)
    # the mapping keeps the data alive without the worker
    assert r == expect(n, 12)
    del r
    gc.collect()
    # the replacement worker serves
    assert s.submit(make, (n, 13))() == expect(n, 13)


def test_tracemalloc_before_and_after(run_python):
    res = run_python("""
        import gc, os, tracemalloc
        import pp

        def make(n, c):
            return bytes([c]) * n

        s = pp.Server(1)
        tracemalloc.start()
        r = s.submit(make, (2 << 20, 1))()
        assert r == b"\\x01" * (2 << 20)
        # tracing: the client copies rather than wrap the allocator
        assert s._data_stats()["regions"]["adopted"] == 0
        tracemalloc.stop()
        del r
        keep = s.submit(make, (2 << 20, 2))()
        assert s._data_stats()["regions"]["adopted"] == 1
        # tracing started later wraps our allocator: freeing still works
        tracemalloc.start()
        more = [s.submit(make, (2 << 20, 3 + i))() for i in range(3)]
        del keep
        gc.collect()
        tracemalloc.stop()
        assert all(m == bytes([3 + i]) * (2 << 20) for i, m in enumerate(more))
        del more
        gc.collect()
        assert s._data_stats()["regions"]["adopted_live"] == 0
        s.destroy()
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("how", ["env", "restart"])
def test_no_regions(run_python, how):
    res = run_python("""
        import os, sys
        if sys.argv[1] == "env":
            os.environ["PPC_REGIONS"] = "0"
        import pp

        def make(n, c):
            return bytes([c]) * n

        s = pp.Server(1, restart=sys.argv[1] == "restart")
        rs = [s.submit(make, (2 << 20, i))() for i in range(3)]
        assert all(r == bytes([i]) * (2 << 20) for i, r in enumerate(rs))
        st = s._data_stats()
        assert st["regions"]["adopted"] == 0, st
        s.destroy()
        print("ok")
    """, args=[how])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_results_outlive_the_server(fresh_server):
    s = ready(fresh_server, 1)
    r = s.submit(make, (2 * MB, 14))()
    live = pp._ppc._region_stats()["adopted_live"]
    s.destroy()
    assert r == expect(2 * MB, 14)
    del r
    gc.collect()
    # unmapped without telling anyone: the Server and its workers are gone
    assert pp._ppc._region_stats()["adopted_live"] == live - 1


def grow(n):
    """A bytearray made in a region, grown past it and shrunk (realloc of a
    region: in place), then a str and a bytes built from it; returns the
    bytes and how many regions this made."""
    before = worker_regions()["made"]
    ba = bytearray(n)
    for k in range(1, 6):
        ba += bytes([k]) * n
    del ba[n // 2:n]
    s = ba.decode("latin-1")
    out = bytes(ba)
    assert s.encode("latin-1") == out
    return out, worker_regions()["made"] - before


def test_worker_objects_grow_and_shrink_in_regions(fresh_server):
    s = ready(fresh_server, 1)
    n = MB
    out, made = s.submit(grow, (n,))()
    assert out == bytes(n // 2) + b"".join(bytes([k]) * n for k in range(1, 6))
    # the bytearray's region grew in place (5 times) and the temporaries
    # reused one region: one each for the bytearray, the temporaries, the
    # str, its encoding and the bytes
    assert made == 5, made
