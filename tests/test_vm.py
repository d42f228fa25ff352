"""Big bytes read in place across processes (src/core/vm.c): a bytes
argument of 1 MB or more is left as a hole in the segment and read by the
worker from the client's memory; a bytes result the same way by the client
from the worker's. Covered here: every pickle shape around the holes,
forked and spawned workers, a Job dropped before its worker read the bytes,
a worker killed mid-job (its replacement reads them), the kernel refusing
cross-process reads as Yama's ptrace_scope 1 does (a worker may not read
its parent, the client) and as 2 does (nobody may read anybody), simulated
through pp.Server(_test=...), a client that may not read its workers, the
feature off, a ppserver on loopback in both directions, and a __main__ class next to a
big bytes object."""
import gc
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

import pp
from conftest import kill_workers_mid_job

MB = 1 << 20


def echo(x):
    return x


def sleepy(x, t):
    import time
    time.sleep(t)
    return len(x)


def digest(x):
    import hashlib
    return hashlib.sha256(x).hexdigest()


def digest_to(x, path):
    import hashlib
    with open(path, "w") as f:
        f.write(hashlib.sha256(x).hexdigest())


def reshape(d):
    # new bytes objects in a nested result: holes in the worker's memory
    return {"rev": d["a"][::-1], "pair": (d["b"], d["b"] + b"!"), "n": d["n"] + 1}


def stats(s):
    return s._data_stats()


def test_bytes_read_in_place_both_ways(fresh_server):
    s = fresh_server(2)
    payloads = [os.urandom(4 * MB + i) for i in range(3)]
    jobs = [s.submit(echo, (p,)) for p in payloads]
    for p, j in zip(payloads, jobs):
        assert j() == p
    st = stats(s)
    assert st["arg_holes"] == 3
    assert st["result_holes"] == 3


def ready(s, n):
    """Wait until s's n workers have started: the client has probed them
    (VMOK) and heard whether they can read it (INIT reply)."""
    jobs = [s.submit(sleepy, (b"", 0.05)) for _ in range(2 * n)]
    assert [j() for j in jobs] == [0] * (2 * n)


def test_spawned_workers(fresh_server, monkeypatch):
    monkeypatch.setenv("PPC_START", "spawn")
    s = fresh_server(2)
    ready(s, 2)
    payloads = [os.urandom(3 * MB) for _ in range(4)]
    jobs = [s.submit(echo, (p,)) for p in payloads]
    assert [j() for j in jobs] == payloads
    assert stats(s)["arg_holes"] == 4 and stats(s)["result_holes"] == 4


def test_data_made_before_the_server_forked(monkeypatch):
    # pages shared copy-on-write with forked workers: read without pinning
    payloads = [os.urandom(2 * MB + i) for i in range(2)]
    s = pp.Server(2)
    try:
        assert [s.submit(echo, (p,))() for p in payloads] == payloads
    finally:
        s.destroy()


def test_shapes_around_the_holes(fresh_server):
    np = pytest.importorskip("numpy")
    s = fresh_server(2)
    a, b = os.urandom(2 * MB), os.urandom(3 * MB)
    arr = np.arange(MB // 8, dtype=np.float64)
    cases = [
        (a, b, 17, "tail"),               # two holes between small values
        ({"x": a, "y": [b, a]},),         # nested; a twice (memoized: one hole)
        ([a, arr, b],),                   # numpy out-of-band buffer between holes
        (b"z" * MB,),                     # exactly the threshold
        (b"y" * (MB - 1),),               # just under it: copied
    ]
    for args in cases:
        got = s.submit(echo, (args,))()
        assert repr(type(got)) == repr(type(args))
        if isinstance(args[0], list):
            assert got[0][0] == a and got[0][2] == b and np.array_equal(got[0][1], arr)
        else:
            assert got == args
    r = s.submit(reshape, ({"a": a, "b": b, "n": 1},))()
    assert r == {"rev": a[::-1], "pair": (b, b + b"!"), "n": 2}
    st = stats(s)
    assert st["arg_holes"] >= 2 + 2 + 2 + 1 + 1
    assert st["result_holes"] >= 1


def test_job_dropped_before_its_worker_read_the_bytes(fresh_server, tmp_path):
    s = fresh_server(1)
    busy = s.submit(sleepy, (b"x", 1.0))
    payload = os.urandom(8 * MB)
    want = hashlib.sha256(payload).hexdigest()
    out = str(tmp_path / "digest")
    s.submit(digest_to, (payload, out))  # the Job object is dropped at once
    del payload
    gc.collect()
    assert stats(s)["held"] == 1  # the server keeps the bytes for the worker
    junk = [os.urandom(8 * MB) for _ in range(4)]  # reuse freed memory, if any
    assert busy() == 1
    s.wait()  # also lets go of the bytes of dropped Jobs now finished
    assert stats(s)["held"] == 0
    with open(out) as f:
        assert f.read() == want
    del junk
    payload = os.urandom(2 * MB)
    s.submit(digest_to, (payload, out + "2"))  # dropped, and held while it runs
    s.submit(echo, (1,))()  # a submit sweeps what finished
    s.wait()
    assert stats(s)["held"] == 0


def test_worker_killed_mid_job(fresh_server):
    s = fresh_server(1)
    payload = os.urandom(6 * MB)
    kill_workers_mid_job(s, s.submit(sleepy, (payload, 1.5)), 0.5)
    assert stats(s)["held"] == 0
    assert s.submit(echo, (payload,))() == payload  # the replacement reads them


@pytest.mark.parametrize("first", ["submitted_at_once", "after_start"])
def test_workers_may_not_read_the_client(fresh_server, caplog, first):
    # ptrace_scope 1: a child may not read its parent, the parent may read
    # its children. Nothing fails, nothing warns; once the workers have
    # started, the client leaves no holes for them.
    with caplog.at_level(logging.INFO, logger="pp"):
        s = fresh_server(2, _test={"vm_refuse": True})
        payloads = [os.urandom(2 * MB + i) for i in range(4)]
        if first == "after_start":
            ready(s, 2)
            before = stats(s)["arg_holes"]
        jobs = [s.submit(echo, (p,)) for p in payloads]
        assert [j() for j in jobs] == payloads
        if first == "after_start":
            assert stats(s)["arg_holes"] == before  # no job had to find out
            assert stats(s)["result_holes"] >= 4  # the client reads its workers
        assert s.submit(echo, (payloads[0],))() == payloads[0]
        deadline = time.time() + 5
        while "cannot read this process's memory" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
    assert "cannot read this process's memory" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_nobody_may_read_anybody(fresh_server):
    # ptrace_scope 2: both directions refused
    s = fresh_server(2, _test={"vm_refuse": True, "vm_noprobe": True})
    ready(s, 2)
    payloads = [os.urandom(2 * MB + i) for i in range(4)]
    jobs = [s.submit(echo, (p,)) for p in payloads]
    jobs.append(s.submit(reshape, ({"a": payloads[0], "b": payloads[1], "n": 1},)))
    assert [j() for j in jobs[:4]] == payloads
    assert jobs[4]() == {"rev": payloads[0][::-1], "pair": (payloads[1], payloads[1] + b"!"),
                         "n": 2}
    assert stats(s) == {"arg_holes": 0, "result_holes": 0, "held": 0}


def test_client_may_not_read_its_workers(fresh_server):
    s = fresh_server(2, _test={"vm_noprobe": True})
    ready(s, 2)
    payloads = [os.urandom(2 * MB) for _ in range(3)]
    assert [s.submit(echo, (p,))() for p in payloads] == payloads
    st = stats(s)
    assert st["arg_holes"] == 3 and st["result_holes"] == 0


def test_test_switches_are_checked():
    with pytest.raises(TypeError):
        pp.Server(0, _test=["vm_refuse"])


def test_off(fresh_server, monkeypatch):
    monkeypatch.setenv("PPC_VM", "0")
    s = fresh_server(1)
    p = os.urandom(3 * MB)
    assert s.submit(echo, (p,))() == p
    assert stats(s) == {"arg_holes": 0, "result_holes": 0, "held": 0}


def test_ppserver_both_ways(fresh_server):
    secret = "vm-test-secret"
    node = fresh_server(1, secret=secret, _listen=("127.0.0.1", 0))
    port = node._server_info()[0]
    s = fresh_server(0, ppservers=("127.0.0.1:%d" % port,), secret=secret)
    deadline = time.time() + 20
    while not s.get_active_nodes().get("127.0.0.1:%d" % port) and time.time() < deadline:
        time.sleep(0.05)
    payloads = [os.urandom(2 * MB + i) for i in range(3)]
    # to the node the client fills its holes; the node reads its worker's
    jobs = [s.submit(echo, (p,)) for p in payloads]
    assert [j() for j in jobs] == payloads
    assert s._stats()["127.0.0.1:%d" % port][1] == 3


def test_main_class_next_to_big_bytes(tmp_path):
    script = tmp_path / "main_class.py"
    script.write_text(textwrap.dedent("""
        import os, pp

        class Box:
            def __init__(self, data):
                self.data = data

        def size(box):
            return type(box).__name__, len(box.data)

        s = pp.Server(1)
        box = Box(os.urandom(3 << 20))
        print(s.submit(size, (box,))(), s._data_stats()["arg_holes"])
        s.destroy()
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                           os.path.abspath(pp.__file__)))))
    assert r.returncode == 0, r.stderr
    # the class travels with the job; the client filled the hole itself, since
    # the scan for __main__ names needs the whole stream: no hole was left
    assert r.stdout.split() == ["('Box',", str(3 << 20) + ")", "0"]


def test_many_in_flight_segments_reused(fresh_server):
    # many jobs with holes both ways at once: argument and result segments
    # are reused while other jobs still read theirs
    import random
    rnd = random.Random(7)
    s = fresh_server(2)
    payloads = [os.urandom(MB + rnd.randrange(3 * MB)) for _ in range(8)]
    jobs = []
    for i in range(40):
        a, b = payloads[i % 8], payloads[(i * 3) % 8]
        shape = i % 4
        args = (a,) if shape == 0 else ((a, b),) if shape == 1 else ({"k": a, "n": i},) \
            if shape == 2 else ([b, i, a],)
        jobs.append((args, s.submit(echo, args)))
    for args, j in jobs:
        assert j() == args[0]
    st = stats(s)
    assert st["arg_holes"] >= 40 and st["result_holes"] >= 10
