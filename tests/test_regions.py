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


expect = make  # the same bytes, made here


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


def fork_paths(big):
    import hashlib
    import os
    import tempfile
    stem = os.path.join(tempfile.gettempdir(), "ppc-fork-%s" % hashlib.sha256(big).hexdigest()[:16])
    return stem + ".go", stem + ".out"


def fork_with_arg(big):
    """big, our only argument, lives in a region. Fork: the child takes
    1000 references to big and keeps them (refcount writes), then, once the
    file go exists (the test has run more jobs, which reuse memory), writes
    the digest of big as it sees it to out. Returns our refcount of big
    before and after the child's references."""
    import hashlib
    import os
    import sys
    import time
    go, out = fork_paths(big)
    r, w = os.pipe()
    before = sys.getrefcount(big)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            keep = [big] * 1000
            os.write(w, b"k")
            deadline = time.time() + 30
            while not os.path.exists(go) and time.time() < deadline:
                time.sleep(0.01)
            with open(out + ".tmp", "w") as f:
                f.write(hashlib.sha256(big).hexdigest())
            os.rename(out + ".tmp", out)
            del keep
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return before, sys.getrefcount(big)


def region_of(obj):
    """The /proc/self/maps line whose mapping holds obj, or None."""
    a = id(obj)
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= a < hi:
                return line.strip()
    return None


def in_region(x):
    """Whether the bytes object x sits in a region (its mapping's name)."""
    line = region_of(x)
    return bool(line) and "memfd:ppc-region" in line


def where(arg):
    # our argument (the job's only one): in a region; what the job makes:
    # ordinary memory
    mine = bytes(len(arg)) + b"!"
    return in_region(arg), in_region(mine), in_region(mine.upper())


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


def test_result_is_a_mapping_of_the_workers_region(fresh_server):
    s = ready(fresh_server, 1)
    before = regions(s)["adopted"]
    r = s.submit(make, (3 * MB + 5, 1))()
    assert r == expect(3 * MB + 5, 1)
    assert type(r) is bytes and len(r) == 3 * MB + 5
    assert regions(s)["adopted"] == before + 1
    assert regions(s)["wrapped"] == 1  # our free wrapper, while r lives
    line = region_of(r)
    assert line and "memfd:ppc-region" in line, line
    # an ordinary bytes object in every way
    assert hash(r) == hash(bytes(r)) and r[5:9] == expect(3 * MB + 5, 1)[5:9]
    assert (r + b"!")[-1:] == b"!" and r.count(b"\x00") == expect(3 * MB + 5, 1).count(b"\x00")
    del r
    # no object in a region left: the allocator is what it was
    assert regions(s)["adopted_live"] == 0 and regions(s)["wrapped"] == 0


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
    # nothing of the worker's lives in a region now: its allocator is its own
    assert s.submit(worker_regions)()["wrapped"] == 0
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


def test_fork_inside_a_worker(fresh_server, wait_until):
    s = ready(fresh_server, 1)
    n = 3 * MB
    a = expect(n, 20)
    go, out = fork_paths(a)
    for p in (go, out):
        if os.path.exists(p):
            os.unlink(p)
    assert s.submit(where, (a,))()[0], "the argument should live in a region"
    before, after = s.submit(fork_with_arg, (a,))()
    # the child's references did not reach our copy of the object
    assert after == before, "a forked child changed the worker's refcount"
    # jobs whose arguments would reuse the region of a's
    for k in range(3):
        assert s.submit(echo, (expect(n, 21 + k),))() == expect(n, 21 + k)
    open(go, "w").close()
    assert wait_until(lambda: os.path.exists(out), timeout=30)
    with open(out) as f:
        seen = f.read()
    os.unlink(go)
    os.unlink(out)
    assert seen == hashlib.sha256(a).hexdigest(), \
        "the worker's forked child saw data changed after the fork"


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


def test_ppserver_workers_make_no_regions(fresh_server, wait_until):
    # a ppserver copies its workers' results for its clients: regions there
    # would be a copy for nothing
    secret = "regions-test-secret"
    node = ready(fresh_server, 1, secret=secret, _listen=("127.0.0.1", 0))
    port = node._server_info()[0]
    s = fresh_server(0, ppservers=("127.0.0.1:%d" % port,), secret=secret)
    assert wait_until(lambda: s.get_active_nodes().get("127.0.0.1:%d" % port), timeout=20)
    n = 2 * MB
    assert s.submit(make, (n, 40))() == expect(n, 40)
    assert s.submit(echo, (expect(n, 41),))() == expect(n, 41)
    st = s.submit(worker_regions)()
    assert st["made"] == 0 and st["wrapped"] == 0, st


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


def test_only_our_objects_live_in_regions(fresh_server):
    s = ready(fresh_server, 1)
    assert s.submit(where, (expect(2 * MB, 30),))() == (True, False, False)
