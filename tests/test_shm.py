"""Large arguments and results through shared memory (src/core/shm.c,
src/py/segwrite.c, payload.c, shmmap.c): bytes and numpy payloads, nested
structures, pinned arguments, segment reuse with many jobs in flight, a
worker killed mid-job, a ppserver on loopback, the pipe fallback when
/proc/<pid>/fd is refused (simulated through pp.Server(_test=...)), no fd
or mapping left behind after destroy(), and large results
waiting in workers: restart=True, a shrinking pool, a worker killed before
its result was taken; numpy results as copy-on-write views of the worker's
segment (their lifetime, forks, the lending cap), other out-of-band
buffers. Tests of numpy payloads skip without numpy; the rest run."""
import os
import signal
import time

import pytest

import pp
from conftest import fork_checker, kill_workers_mid_job, mapping_of

try:
    import numpy as np
except ImportError:  # the bytes paths are tested all the same
    np = None
needs_numpy = pytest.mark.skipif(np is None, reason="needs numpy (numpy arrays as payloads)")

MB = 1 << 20


def echo(x):
    return x


def checksum(x):
    return int(x.sum()) if hasattr(x, "sum") else sum(x[::4096])


def nested(d):
    return {"a": d["a"][::-1], "b": [b * 2 for b in d["b"]], "c": d["c"], "small": d["small"] + 1}


def keep(x):
    global KEPT
    KEPT = x  # pins the argument's segment: the client must not reuse it
    return float(x[0])


def kept_sum():
    return float(KEPT.sum())


def write_arg(x):
    x[:] = 7.0  # arguments arrive writable
    return float(x.sum())


def sleepy(x, t):
    import time
    time.sleep(t)
    return len(x)


def sleepy_echo(x, t):
    import time
    time.sleep(t)
    return x


def make(n, seed=0):
    return np.random.default_rng(seed).random(n // 8)


def test_bytes_64mb(fresh_server):
    s = fresh_server(2)
    payloads = [os.urandom(64 * MB) for _ in range(2)]
    jobs = [s.submit(echo, (p,)) for p in payloads]
    for p, j in zip(payloads, jobs):
        assert j() == p


@needs_numpy
def test_numpy_64mb_and_writable(fresh_server):
    s = fresh_server(2)
    a = make(64 * MB)
    b = s.submit(echo, (a,))()
    assert isinstance(b, np.ndarray) and b.dtype == a.dtype and np.array_equal(a, b)
    assert b.flags.writeable
    c = make(4 * MB, 1)
    assert s.submit(write_arg, (c,))() == 7.0 * c.size
    assert not np.all(c == 7.0)  # the client's array is untouched


@needs_numpy
def test_nested_several_buffers(fresh_server):
    s = fresh_server(2)
    d = {"a": make(8 * MB, 2), "b": [os.urandom(3 * MB), bytearray(os.urandom(2 * MB))],
         "c": (make(2 * MB, 3).reshape(512, -1), np.asfortranarray(make(2 * MB, 4).reshape(256, -1))),
         "small": 41}
    r = s.submit(nested, (d,))()
    assert np.array_equal(r["a"], d["a"][::-1])
    assert r["b"] == [d["b"][0] * 2, d["b"][1] * 2]
    assert np.array_equal(r["c"][0], d["c"][0]) and np.array_equal(r["c"][1], d["c"][1])
    assert r["c"][1].flags.f_contiguous
    assert r["small"] == 42


@needs_numpy
def test_results_large_and_small_mixed(fresh_server):
    s = fresh_server(2)
    arrays = [make((i % 3) * 3 * MB + 8, i) for i in range(12)]
    jobs = [(a, s.submit(echo, (a,)), s.submit(checksum, (a,))) for a in arrays]
    for a, j1, j2 in jobs:
        assert np.array_equal(j1(), a)
        assert j2() == int(a.sum())


@needs_numpy
def test_pinned_argument_never_corrupted(fresh_server):
    s = fresh_server(1)
    first = make(4 * MB, 10)
    assert s.submit(keep, (first,))() == float(first[0])
    # later jobs of the same size would reuse a released segment
    for i in range(6):
        a = make(4 * MB, 20 + i)
        assert np.array_equal(s.submit(echo, (a,))(), a)
    assert s.submit(kept_sum)() == pytest.approx(float(first.sum()))


@needs_numpy
def test_many_in_flight_reuse(fresh_server):
    s = fresh_server(2)
    for rnd in range(3):
        arrays = [make(2 * MB, 100 * rnd + i) for i in range(24)]
        jobs = [s.submit(echo, (a,)) for a in arrays]
        for a, j in zip(arrays, jobs):
            assert np.array_equal(j(), a)


@needs_numpy
def test_result_taken_later_from_another_thread(fresh_server):
    import threading
    s = fresh_server(2)
    a = make(8 * MB, 5)
    j = s.submit(echo, (a,))
    s.wait()
    out = []
    t = threading.Thread(target=lambda: out.append(j()))
    t.start()
    t.join()
    assert np.array_equal(out[0], a)
    # results never taken: their segments go back when the jobs are dropped
    for _ in range(3):
        s.submit(echo, (a,)).wait()
    assert np.array_equal(s.submit(echo, (a,))(), a)


def test_worker_killed_mid_job_with_large_arg(fresh_server):
    s = fresh_server(1)
    big = os.urandom(8 * MB)
    kill_workers_mid_job(s, s.submit(sleepy, (big, 30)), 1.0)
    assert s.submit(sleepy, (big, 0))() == len(big)


@needs_numpy
def test_fallback_when_proc_open_refused(fresh_server):
    s = fresh_server(2, _test={"shm_refuse": True})
    arrays = [make(3 * MB, i) for i in range(4)]
    jobs = [s.submit(echo, (a,)) for a in arrays]
    for a, j in zip(arrays, jobs):
        assert np.array_equal(j(), a)
    big = os.urandom(5 * MB)
    assert s.submit(echo, (big,))() == big


def test_shm_off(fresh_server):
    s = fresh_server(1, _shm=False)
    big = os.urandom(3 * MB)
    assert s.submit(echo, (big,))() == big
    if np is not None:
        a = make(3 * MB)
        assert np.array_equal(s.submit(echo, (a,))(), a)


@needs_numpy
def test_remote_large_args(fresh_server):
    secret = "shm-test-secret"
    node = fresh_server(1, secret=secret, _listen=("127.0.0.1", 0))
    port = node._server_info()[0]
    s = fresh_server(1, ppservers=("127.0.0.1:%d" % port,), secret=secret)
    arrays = [make(3 * MB, 50 + i) for i in range(6)]
    big = os.urandom(3 * MB)
    deadline = time.time() + 20
    while not s.get_active_nodes().get("127.0.0.1:%d" % port) and time.time() < deadline:
        time.sleep(0.05)
    jobs = [s.submit(sleepy, (a, 0.3)) for a in arrays]
    jobs_e = [s.submit(echo, (a,)) for a in arrays] + [s.submit(echo, (big,))]
    assert [j() for j in jobs] == [a.size for a in arrays]
    for a, j in zip(arrays + [big], jobs_e):
        r = j()
        assert (r == big) if isinstance(a, bytes) else np.array_equal(r, a)
    assert s._stats()["127.0.0.1:%d" % port][1] > 0  # some ran on the node


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _memfd_maps():
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "memfd:ppc" in line)


def test_no_fd_or_mapping_leak_after_destroy():
    before_fds, before_maps = _fds(), _memfd_maps()
    for _ in range(2):
        s = pp.Server(2)
        arrays = [make(4 * MB, i) if np is not None else os.urandom(4 * MB) for i in range(6)]
        jobs = [s.submit(echo, (a,)) for a in arrays]
        jobs[0]()
        pending = s.submit(sleepy, (os.urandom(2 * MB), 5))
        s.destroy()
        with pytest.raises(pp.DestroyedServerError):
            pending()
        del jobs, pending, s
    import gc
    gc.collect()
    assert _memfd_maps() == before_maps
    assert _fds() <= before_fds


def test_restart_large_result_taken_late(fresh_server):
    # restart=True retires each worker after one job: its large results
    # must not wait in it (they travel inline), or they would die with it
    s = fresh_server(1, restart=True)
    big = os.urandom(3 * MB)
    j = s.submit(echo, (big,))
    s.submit(len, (b"x",))()  # the first worker is gone by now
    time.sleep(0.3)
    assert j() == big


def test_shrink_keeps_worker_until_its_results_are_taken(fresh_server):
    s = fresh_server(2)
    bigs = [os.urandom(3 * MB + i) for i in range(2)]
    jobs = [s.submit(sleepy_echo, (b, 0.2)) for b in bigs]
    s.wait()
    s.set_ncpus(1)
    time.sleep(0.5)
    assert len(s._worker_pids()) == 2  # the retired one still holds a result
    assert [j() for j in jobs] == bigs
    deadline = time.time() + 10
    while len(s._worker_pids()) > 1 and time.time() < deadline:
        time.sleep(0.05)
    assert len(s._worker_pids()) == 1  # and leaves once it was taken


def test_large_result_of_a_worker_killed_before_it_was_taken(fresh_server):
    s = fresh_server(1)
    big = os.urandom(3 * MB)
    j = s.submit(echo, (big,))
    s.wait()
    for pid in s._worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(pp.RemoteError) as ei:
        j()
    assert "has exited since" in str(ei.value.__cause__)
    assert s.submit(echo, (big,))() == big  # the replacement serves


# ---- numpy results: views of the worker's segment, mapped copy-on-write


def _private_maps():
    """Our copy-on-write mappings of workers' result segments."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "memfd:ppc" in line and line.split()[1] == "rw-p"]


def fill(n, v):
    import numpy as np
    return np.full(n // 8, float(v))


def pickle_buffer(n):
    import pickle
    return pickle.PickleBuffer(bytearray(b"q" * n))


def a_bytearray(n):
    return bytearray(b"r" * n)


@needs_numpy
def test_numpy_result_is_a_writable_view_of_the_workers_segment(fresh_server):
    import gc
    s = fresh_server(1)
    before = len(_private_maps())
    r = s.submit(fill, (8 * MB, 3))()
    line = mapping_of(r.ctypes.data)
    assert line and "memfd:ppc" in line and line.split()[1] == "rw-p", line
    assert r.flags.writeable and float(r.sum()) == 3.0 * r.size
    r[:] = 1.0  # copy-on-write: ours alone
    assert float(r.sum()) == float(r.size)
    base = r.base
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    assert base is not None  # kept alive by its base
    del r, base
    gc.collect()
    assert len(_private_maps()) == before  # unmapped with the array
    # the worker got its segment back and serves from it again
    for v in range(4):
        assert float(s.submit(fill, (8 * MB, v))().sum()) == float(v) * MB


@needs_numpy
def test_segment_not_reused_while_the_array_lives(fresh_server):
    s = fresh_server(1)
    held = s.submit(fill, (4 * MB, 100))()
    for v in range(8):  # same size: a reused segment would show through
        assert float(s.submit(fill, (4 * MB, v))().sum()) == float(v) * (MB // 2)
    assert held.min() == 100.0 and held.max() == 100.0


@needs_numpy
def test_more_arrays_held_than_a_worker_lends(fresh_server):
    # a worker lends at most 64 segments; later results travel inline
    s = fresh_server(1)
    held = [s.submit(fill, (MB + 64, i))() for i in range(70)]
    assert [float(a[0]) for a in held] == [float(i) for i in range(70)]
    assert all(a.flags.writeable for a in held)
    assert len(_private_maps()) >= 64
    del held
    assert float(s.submit(fill, (MB + 64, 99))()[-1]) == 99.0


@needs_numpy
def test_mapped_result_of_a_killed_worker_stays(fresh_server):
    s = fresh_server(1)
    r = s.submit(fill, (4 * MB, 5))()
    for pid in s._worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert float(r.sum()) == 5.0 * (MB // 2)
    r[0] = 1.0
    assert r[0] == 1.0
    del r
    assert float(s.submit(fill, (4 * MB, 6))().sum()) == 6.0 * (MB // 2)


@needs_numpy
def test_mapped_results_outlive_destroy():
    import gc
    before_fds, before = _fds(), len(_private_maps())
    s = pp.Server(1)
    r = [s.submit(fill, (4 * MB, i))() for i in range(3)]
    s.destroy()
    assert [float(a[-1]) for a in r] == [0.0, 1.0, 2.0]
    del r, s
    gc.collect()
    assert len(_private_maps()) == before
    assert _fds() <= before_fds


@needs_numpy
def test_client_fork_keeps_its_view_of_a_mapped_array(fresh_server):
    import gc
    s = fresh_server(1)
    r = s.submit(fill, (4 * MB, 11))()
    child_ok = fork_checker(lambda: r.min() == 11.0 and r.max() == 11.0)
    # the parent drops its array: the worker must not reuse the segment,
    # which the child still maps
    del r
    gc.collect()
    for v in range(6):
        assert float(s.submit(fill, (4 * MB, v))()[0]) == float(v)
    assert child_ok(), "the child's array changed"


@needs_numpy
def test_client_fork_child_and_parent_both_keep_the_array(fresh_server):
    s = fresh_server(1)
    r = s.submit(fill, (4 * MB, 12))()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if float(r.sum()) == 12.0 * (MB // 2) else 1)
    _, st = os.waitpid(pid, 0)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    for v in range(4):
        s.submit(fill, (4 * MB, v))()
    assert float(r.sum()) == 12.0 * (MB // 2)


def test_other_out_of_band_buffers(fresh_server):
    import gc
    s = fresh_server(1)
    before = len(_private_maps())
    m = s.submit(pickle_buffer, (3 * MB,))()
    assert isinstance(m, memoryview) and len(m) == 3 * MB and bytes(m[:2]) == b"qq"
    ba = s.submit(a_bytearray, (3 * MB,))()
    assert type(ba) is bytearray and ba == bytearray(b"r" * (3 * MB))
    del m
    gc.collect()
    assert len(_private_maps()) == before  # the bytearray is a copy of ours
    assert s.submit(a_bytearray, (3 * MB,))() == ba
