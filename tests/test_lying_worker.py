"""Workers that lie about their shared memory, through real processes.

A worker's result segment stays writable by the worker (and by any process
of the user) while the client reads it. These tests run job functions that
attack the client the way hostile user code (or, on a ppserver, another
client's job) could:

  * a background thread in the worker finds its own result segments
    (/proc/self/fd, memfd:ppc) and keeps flipping the lengths in the OOB
    buffer table and the trailer's stream length, or the first offset in
    the hole table, between a valid value and one far past the mapping
    while the client reads: the client must not crash, and gets each result
    intact or a clear error. Buffers of plain bytearrays and numpy arrays
    (results the client maps copy-on-write and hands out as views) both;
  * a job writes a forged RESULT frame on its worker's pipe (fd 4) that
    names a segment of another worker (its pid, its fd, a blob written
    there by the liar): the job fails with WorkerError naming the refusal,
    and the Server keeps serving;
  * the same flipping on a ppserver's worker: the node, which copies its
    workers' results for remote clients, keeps running;
  * a worker cannot shrink its segments under a reader (they are sealed),
    not even under a numpy result the client still holds as a view of one;
  * a forged RESULT naming an unsealed memfd of the worker's own (which it
    could cut short under the client's view) is refused.

Each client runs in its own interpreter (run_python) so a crash is seen as
its exit status. Without the private copies these clients die of SIGSEGV
or SIGBUS within a few results, and the forged frame is accepted.
"""
import signal

import pytest

from clusterutil import alive, start_ppserver  # noqa: F401
from conftest import check_ok

# The attacker, shipped to the worker as a dependency of the job.
FLIPPER = r'''
def flip_forever(mode, n):
    """Find this worker's result segments and flip fields of each blob's
    layout (every buffer length; the first hole's offset) between their
    true value and one 64 MB past it, all together."""
    import struct
    import time
    magic = struct.pack("<I", 0x56435050 if mode == "holes" else 0x42435050)
    far = 1 << 26  # 64 MB
    maps = {}
    targets = {}  # (fd, field position) -> true value
    rounds = 0
    while True:
        rounds += 1
        if not targets or rounds % 20 == 0:
            scan(mode, n, maps, targets, magic)
        # one byte written at a time (struct.pack_into would zero a field
        # first: a value the reader could take as true); far is 1 << 26:
        # byte 3 of the little-endian field
        flips = [(maps[name], field + 3, (v >> 24) & 0xff, ((v + far) >> 24) & 0xff)
                 for (name, field), v in targets.items() if name in maps]
        for _ in range(2000):
            for mm, at, lo, hi in flips:
                mm[at] = hi
            for mm, at, lo, hi in flips:
                mm[at] = lo
        time.sleep(0)


def scan(mode, n, maps, targets, magic):
    """Map this worker's result segments; note the fields to flip in each."""
    import mmap
    import os
    import struct
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink("/proc/self/fd/" + name)
            if link.startswith("/memfd:ppc (") and name not in maps:
                fd = int(name)
                maps[name] = mmap.mmap(fd, os.fstat(fd).st_size)
        except (OSError, ValueError):
            pass
    for name, mm in list(maps.items()):
        pos = mm.find(magic)
        if pos < 16:
            continue
        fields = []
        if mode != "holes":
            # trailer: u64 stream_len, u32 nbufs, u32 magic; the table before
            nb = struct.unpack_from("<I", mm, pos - 4)[0]
            table = pos - 12 - 16 * nb
            if nb == 0 or nb > 64 or table < 0:
                continue
            for i in range(nb):  # (off, len) each: the lengths
                field = table + 16 * i + 8
                v = struct.unpack_from("<Q", mm, field)[0]
                fields.append((field, v, v))
            field = pos - 12  # the stream length
            fields.append((field, struct.unpack_from("<Q", mm, field)[0], n))
        else:
            field = pos + 16  # hole 0's offset; its length follows
            fields.append((field,) + struct.unpack_from("<QQ", mm, field))
        # only once the worker has written the table whole: every buffer
        # (or hole 0) is n bytes long
        for field, v, length in fields:
            if length != n or v >= (1 << 24):
                break
        else:
            for field, v, _ in fields:
                targets.setdefault((name, field), v)


def lying_result(n, mode):
    import pickle
    import sys
    import threading
    if getattr(sys, "_ppc_test_flipper", None) is None:
        sys._ppc_test_flipper = threading.Thread(target=flip_forever, args=(mode, n), daemon=True)
        sys._ppc_test_flipper.start()
    if mode == "oob":  # 32 out-of-band buffers of n bytes
        return [pickle.PickleBuffer(bytearray(b"\x07" * n)) for _ in range(32)]
    if mode == "numpy":  # 32 arrays of n bytes: mapped by the client
        import numpy
        return [numpy.full(n, 7, dtype=numpy.uint8) for _ in range(32)]
    return (b"\x01" * n, b"\x02" * n)
'''

CLIENT = FLIPPER + r'''

import sys
import pp

mode = sys.argv[1]
n = 3 << 20 if mode == "holes" else (3 << 20) // 32
if len(sys.argv) > 2:  # the workers of a ppserver: addr, secret
    s = pp.Server(ncpus=0, ppservers=(sys.argv[2],), secret=sys.argv[3])
else:
    s = pp.Server(ncpus=1)
intact = refused = 0
# at least 150 results, and on until the flipper has hit one (a loaded
# machine may schedule it rarely), for at most 120 s
import time
deadline = time.monotonic() + 120
while intact + refused < 150 or (refused == 0 and time.monotonic() < deadline):
    try:
        r = s.submit(lying_result, (n, mode), (flip_forever, scan))()
    except (pp.RemoteError, pp.WorkerError) as e:
        why = str(e) + " " + str(e.__cause__)
        assert "malformed" in why or "cannot read the worker's result segment" in why, repr(e)
        refused += 1
        continue
    if mode == "oob":
        assert [bytes(b) for b in r] == [b"\x07" * n] * 32, "result changed"
    elif mode == "numpy":
        assert len(r) == 32 and all(a.shape == (n,) and (a == 7).all() for a in r), "changed"
        r[0][:] = 1  # a view of the mapping, writable: the write stays ours
        assert (r[0] == 1).all()
    else:
        assert r == (b"\x01" * n, b"\x02" * n), "result changed"
    intact += 1
# the attack ran: the worker kept flipping while we read
assert refused > 0, "no result was refused: the flipper never hit"
print("intact", intact, "refused", refused)
s.destroy()
'''


def _check_survived(proc):
    if proc.returncode < 0:
        pytest.fail("the client died of signal %s\n%s" % (signal.Signals(-proc.returncode).name,
                                                          proc.stderr[-3000:]))
    return check_ok(proc)


@pytest.mark.timeout(240)
def test_oob_table_rewritten_while_client_reads(run_python):
    out = _check_survived(run_python(CLIENT, args=("oob",), timeout=200))
    assert "intact" in out


@pytest.mark.timeout(240)
def test_numpy_result_layout_rewritten_while_client_maps_it(run_python):
    """numpy results are mapped copy-on-write and their buffers handed out as
    views: the layout is read once, so a flipped length or stream length
    refuses the result, never cuts a view past the mapping."""
    pytest.importorskip("numpy", reason="the numpy result path needs numpy")
    out = _check_survived(run_python(CLIENT, args=("numpy",), timeout=200))
    assert "intact" in out


@pytest.mark.timeout(240)
def test_hole_table_rewritten_while_client_reads(run_python):
    out = _check_survived(run_python(CLIENT, args=("holes",), timeout=200))
    assert "intact" in out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["holes", "oob"])
def test_ppserver_survives_tables_rewritten_by_its_worker(run_python, start_ppserver, mode):
    """On a ppserver the engine itself copies a worker's result segment (its
    holes filled) for the remote client: a job rewriting its tables must
    not bring the node down."""
    node = start_ppserver(workers=1)
    out = _check_survived(run_python(CLIENT, args=(mode, node.addr, node.secret), timeout=200))
    assert "intact" in out
    assert alive(node.pid) and node.proc.poll() is None, node.log()


FORGER = r'''
import os
import re
import time
import pp


def make_segment(n):
    return b"\x05" * n


def forge(job_id, pids):
    """Write a blob (the pickle of 'forged') into a segment of the other
    worker (the victim), then a RESULT frame for this job naming it on our
    pipe to the client, and leave without a result of our own."""
    import os
    import pickle
    import struct
    victim_pid = [p for p in pids if p != os.getpid()][0]
    fd = None
    for name in os.listdir("/proc/%d/fd" % victim_pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (victim_pid, name)).startswith("/memfd:ppc ("):
                fd = int(name)
                break
        except OSError:
            pass
    if fd is None:
        return "no segment in the victim"
    stream = pickle.dumps("forged", protocol=5)
    blob = stream + struct.pack("<QII", len(stream), 0, 0x42435050)
    with open("/proc/%d/fd/%d" % (victim_pid, fd), "r+b") as f:
        f.write(blob)
    ref = struct.pack("<IIQQ", victim_pid, fd, 1, len(blob))
    payload = struct.pack("<Q", 1000) + struct.pack("<BI", 0, 0) + ref
    header = struct.pack("<QQBBHI", len(payload), job_id, 4, 0, 2, 0)  # RESULT, aux SHM
    os.write(4, header + payload)
    os._exit(0)


s = pp.Server(ncpus=2)
# both workers make a large result, so each holds a result segment
pids = set()
for _ in range(50):
    jobs = [s.submit(make_segment, (3 << 20,)) for _ in range(4)]
    for j in jobs:
        assert j() == b"\x05" * (3 << 20)
    pids = set(s._worker_pids())
    if len(pids) == 2:
        break
assert len(pids) == 2, pids
# the liar is whichever worker runs the job; it names the other one
probe = s.submit(os.getpid, ())
probe()
job = s.submit(forge, (probe.tid + 1, sorted(pids)))
assert job.tid == probe.tid + 1
try:
    r = job()
except pp.WorkerError as e:
    msg = str(e)
    assert "another process" in msg and "refused" in msg, msg
    print("refused:", msg)
else:
    raise SystemExit("forged result accepted: %r" % (r,))
# the liar left (os._exit) after its forged frame: once the Server has seen
# it go, the Server keeps serving
liar = int(re.search(r"worker process (\d+)", msg).group(1))
deadline = time.monotonic() + 30
while liar in s._worker_pids() and time.monotonic() < deadline:
    time.sleep(0.01)
assert liar not in s._worker_pids()
assert s.submit(make_segment, (10,))() == b"\x05" * 10
assert s.submit(make_segment, (3 << 20,))() == b"\x05" * (3 << 20)
s.destroy()
print("served")
'''


@pytest.mark.timeout(120)
def test_result_naming_another_workers_segment_is_refused(run_python):
    out = _check_survived(run_python(FORGER, timeout=100))
    assert "refused:" in out and "served" in out


SHRINKER = r'''
import pp


def big(n):
    return b"\x09" * n


def shrink_own_segments():
    """Try to cut every result segment of this worker to nothing."""
    import os
    tried = refused = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink("/proc/self/fd/" + name).startswith("/memfd:ppc ("):
                continue
        except OSError:
            continue
        tried += 1
        try:
            os.ftruncate(int(name), 0)
        except PermissionError:
            refused += 1
    return tried, refused


s = pp.Server(ncpus=1)
assert s.submit(big, (3 << 20,))() == b"\x09" * (3 << 20)
tried, refused = s.submit(shrink_own_segments, ())()
assert tried > 0 and refused == tried, (tried, refused)
assert s.submit(big, (3 << 20,))() == b"\x09" * (3 << 20)
s.destroy()
print("sealed", tried)
'''


@pytest.mark.timeout(120)
def test_worker_cannot_shrink_its_segments(run_python):
    out = _check_survived(run_python(SHRINKER, timeout=100))
    assert "sealed" in out


NUMPY_SHRINKER = SHRINKER.split("\n\ns = pp.Server", 1)[0] + r"""

import numpy


def array(n):
    import numpy
    return numpy.full(n, 9, dtype=numpy.uint8)


s = pp.Server(ncpus=1)
a = s.submit(array, (8 << 20,))()  # a view of the worker's segment, mapped
tried, refused = s.submit(shrink_own_segments, ())()
assert tried > 0 and refused == tried, (tried, refused)
# every page of the array, after the attempt: a cut file would SIGBUS here
assert int(a.sum()) == 9 * (8 << 20)
a[:] = 3
assert int(a.sum()) == 3 * (8 << 20)
del a
assert int(s.submit(array, (8 << 20,))().sum()) == 9 * (8 << 20)
s.destroy()
print("sealed", tried)
"""


@pytest.mark.timeout(120)
def test_worker_cannot_shrink_a_segment_under_a_numpy_result(run_python):
    pytest.importorskip("numpy", reason="the numpy result path needs numpy")
    out = _check_survived(run_python(NUMPY_SHRINKER, timeout=100))
    assert "sealed" in out


UNSEALED = r"""
import os
import time
import pp


def forge_unsealed(job_id):
    # A RESULT naming a memfd of our own without seals, holding a valid
    # blob (one out-of-band buffer); cut to nothing once the client could
    # have mapped it.
    import os
    import pickle
    import struct
    import time
    n = 4 << 20
    buf = bytearray(b"\x06" * n)
    stream = pickle.dumps(pickle.PickleBuffer(buf), protocol=5, buffer_callback=lambda b: False)
    at = (len(stream) + 63) // 64 * 64
    blob = (stream + b"\0" * (at - len(stream)) + bytes(buf) + struct.pack("<QQ", at, n)
            + struct.pack("<QII", len(stream), 1, 0x42435050))
    fd = os.memfd_create("ppc")
    os.write(fd, blob)
    ref = struct.pack("<IIQQ", os.getpid(), fd, 1, len(blob))
    payload = struct.pack("<Q", 1000) + struct.pack("<BI", 0, 0) + ref
    header = struct.pack("<QQBBHI", len(payload), job_id, 4, 0, 2, 0)  # RESULT, aux SHM
    os.write(4, header + payload)
    time.sleep(0.5)
    os.ftruncate(fd, 0)
    time.sleep(1)
    os._exit(0)


s = pp.Server(ncpus=1)
probe = s.submit(os.getpid, ())
liar = probe()
job = s.submit(forge_unsealed, (probe.tid + 1,))
assert job.tid == probe.tid + 1
try:
    r = job()
except (pp.RemoteError, pp.WorkerError) as e:
    print("refused:", e, "|", e.__cause__)
else:
    time.sleep(1.5)  # the worker has cut the file by now
    print("accepted, length", len(bytes(r)))
    raise SystemExit("an unsealed segment was mapped")
# the liar leaves (os._exit) after its forged frame; then the Server serves on
deadline = time.monotonic() + 30
while liar in s._worker_pids() and time.monotonic() < deadline:
    time.sleep(0.01)
assert liar not in s._worker_pids()
assert s.submit(time.time, ())() > 0
s.destroy()
print("served")
"""


@pytest.mark.timeout(120)
def test_result_in_an_unsealed_segment_is_refused(run_python):
    out = _check_survived(run_python(UNSEALED, timeout=100))
    assert "refused:" in out and "served" in out
