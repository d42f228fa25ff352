"""A numpy result that lies in the job's own argument segment (the function
returned its argument, a slice of it, or changed it in place and returned
it) is not copied: the client maps that segment of its own copy-on-write
and the segment is kept for the result until the array dies. Covered here:
the shortcut is taken (the result maps one of the client's own memfds) and
the result behaves as any array; the segment is not reused while the array
lives; a worker that keeps the argument and writes it in a later job does
not change the client's result; a fork of the client keeps what it saw; the
result outlives destroy() and its worker; results that are new arrays take
the usual way."""
import gc
import os
import signal
import time

import pytest

import pp
from conftest import fork_checker

np = pytest.importorskip("numpy", reason="the shortcut is for numpy arrays")

N = 1 << 18  # float64 elements: 2 MB, above the 1 MB segment threshold


def echo(x):
    return x


def double_in_place(x):
    x *= 2
    return x


def middle(x):
    return x[1000:-7]


def plus1(x):
    return x + 1


def keep(x):
    global kept
    kept = x
    return x


def scribble():
    kept[:] = -1.0
    return float(kept[0])


def data(seed):
    return np.random.default_rng(seed).random(N)


def own_memfd_inodes():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "memfd:" in os.readlink("/proc/self/fd/" + fd):
                inodes.add(os.stat("/proc/self/fd/" + fd).st_ino)
        except OSError:
            pass
    return inodes


def mapping_inode(arr):
    """The inode of the file behind the mapping holding arr's data (0: none)."""
    a = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= a < hi:
                return int(parts[4])
    return 0


def test_returned_argument_maps_our_own_segment(fresh_server):
    s = fresh_server(1)
    a = data(1)
    r = s.submit(echo, (a,))()
    assert type(r) is np.ndarray and r.dtype == a.dtype and np.array_equal(r, a)
    ino = mapping_inode(r)
    assert ino and ino in own_memfd_inodes(), "the result was copied, not mapped from our segment"
    assert r.flags.writeable
    r[:10] = 5.0
    assert np.array_equal(a, data(1)), "writing the result changed the argument"
    # a result that is a new array takes the usual way (the worker's segment)
    r2 = s.submit(plus1, (a,))()
    assert np.array_equal(r2, a + 1) and mapping_inode(r2) not in own_memfd_inodes()


def test_in_place_and_slices(fresh_server):
    s = fresh_server(2)
    a = data(2)
    r = s.submit(double_in_place, (a,))()
    assert np.array_equal(r, 2 * data(2)) and np.array_equal(a, data(2))
    m = s.submit(middle, (a,))()
    assert np.array_equal(m, a[1000:-7])


def test_segment_not_reused_while_the_result_lives(fresh_server):
    s = fresh_server(2)
    r = s.submit(echo, (data(3),))()
    # same-size arguments would take the segment from the pool if it were free
    for k in range(6):
        assert np.array_equal(s.submit(echo, (data(10 + k),))(), data(10 + k))
    assert np.array_equal(r, data(3))
    del r
    gc.collect()
    for k in range(3):
        assert np.array_equal(s.submit(echo, (data(20 + k),))(), data(20 + k))


def test_worker_writing_its_kept_argument_later(fresh_server):
    s = fresh_server(1)
    r = s.submit(keep, (data(4),))()
    assert s.submit(scribble)() == -1.0  # the worker's own copy changed
    assert np.array_equal(r, data(4)), "a later write in the worker reached the result"
    # the segment the worker still views is never reused
    del r
    gc.collect()
    for k in range(4):
        assert np.array_equal(s.submit(echo, (data(30 + k),))(), data(30 + k))
    assert s.submit(scribble)() == -1.0


def test_client_fork_keeps_what_it_saw(fresh_server):
    s = fresh_server(1)
    r = s.submit(echo, (data(5),))()
    want = data(5).tobytes()
    child_ok = fork_checker(lambda: r.tobytes() == want)
    # the parent drops its result; new jobs would reuse the segment
    del r
    gc.collect()
    for k in range(4):
        assert np.array_equal(s.submit(echo, (data(40 + k),))(), data(40 + k))
    assert child_ok(), "the forked child saw changed data"


def test_result_outlives_its_worker_and_the_server(fresh_server):
    s = fresh_server(1)
    r = s.submit(echo, (data(6),))()
    pid = s.submit(os.getpid)()
    os.kill(pid, signal.SIGKILL)
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by:  # until the engine has reaped it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    assert np.array_equal(r, data(6))
    assert np.array_equal(s.submit(echo, (data(7),))(), data(7))
    s.destroy()
    assert np.array_equal(r, data(6))
    r[0] = 1.0
    del r
    gc.collect()
