"""The cluster through real ppserver processes on loopback (ARCHITECTURE.md
"Failures", DESIGN.md error table and "Network protocol").

  * remote-only and local + remote clients: correct results, nodes in
    get_active_nodes() with their worker counts, a print_stats row per node,
    work shared between local and remote workers;
  * wrong secret, unreachable node: ERROR on the "pp" logger, node not used,
    jobs with nowhere to run fail clearly and fast;
  * a node SIGKILLed or SIGSTOPped mid-run: its jobs rerun elsewhere, or
    fail clearly after bounded retries;
  * hostile bytes and frames: only that connection closes, the node keeps
    serving, its memory stays flat;
  * a client SIGKILLed mid-run: the node drops its jobs and frees its
    workers for the next client;
  * heartbeats: a job longer than the liveness interval succeeds;
  * the handshake's Python-version check against a fake node speaking the
    protocol by hand.
"""
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pp
import cluster_jobs as J
from clusterutil import (F_AUTH, F_BYE, F_CHALLENGE, F_ERROR, F_FUNC, F_HELLO, F_JOB, F_PING,
                         F_RESULT, F_WELCOME, HDR, PROTO_VERSION, PPServer, Wire, alive, frame, free_port,
                         hello_payload, mac, rss_kb, start_ppserver, welcome_payload)  # noqa: F401
import tlswire
from conftest import child_env, tracked, _wait_until as wait_until

SECRET = "cluster-secret-for-tests"


def pp_errors(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "pp" and r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ normal use

@pytest.mark.timeout(30)
def test_remote_only_jobs_correct_and_node_listed(start_ppserver):
    node = start_ppserver(workers=2)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        jobs = [c.submit(J.square_pid, (i,)) for i in range(50)]
        assert [j()[0] for j in jobs] == [i * i for i in range(50)]
        # the jobs ran in the node's workers, not here
        node_workers = set(node.workers())
        assert {j()[1] for j in jobs} <= node_workers
        assert c.get_active_nodes() == {node.addr: 2}
        stats = c.get_stats()
        assert stats[node.addr].njobs == 50
        assert stats[node.addr].ncpus == 2


@pytest.mark.timeout(40)
def test_local_and_remote_share_work(start_ppserver, capsys):
    node = start_ppserver(workers=2)
    with pp.Server(ncpus=1, ppservers=(node.addr,), secret=SECRET) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        assert c.get_active_nodes() == {"local": 1, node.addr: 2}
        jobs = [c.submit(J.sleep_then, (i, 0.05)) for i in range(40)]
        assert [j()[0] for j in jobs] == list(range(40))
        stats = c.get_stats()
        assert stats["local"].njobs > 0 and stats[node.addr].njobs > 0, stats
        assert stats["local"].njobs + stats[node.addr].njobs == 40
        capsys.readouterr()
        c.print_stats()
        out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.count("|") == 4 and "job count" not in line]
    assert sorted(r.rsplit("|", 1)[1].strip() for r in rows) == sorted(["local", node.addr]), out


@pytest.mark.timeout(40)
def test_two_nodes_and_code_object_functions(start_ppserver):
    a = start_ppserver(workers=1)
    b = start_ppserver(workers=1)
    with pp.Server(ncpus=0, ppservers=(a.addr, b.addr), secret=SECRET) as c:
        assert wait_until(lambda: len(c.get_active_nodes()) == 2, 10)
        # a lambda travels as a code object (same Python here: allowed)
        jobs = [c.submit(lambda x: x + 1, (i,)) for i in range(20)]
        assert [j() for j in jobs] == list(range(1, 21))
        jobs = [c.submit(J.sleep_then, (i, 0.1)) for i in range(8)]
        assert [j()[0] for j in jobs] == list(range(8))
        stats = c.get_stats()
        assert stats[a.addr].njobs > 0 and stats[b.addr].njobs > 0


@pytest.mark.timeout(30)
def test_remote_exception_and_missing_module(start_ppserver):
    node = start_ppserver(workers=1)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        with pytest.raises(ZeroDivisionError):
            c.submit(J.divide, (1, 0))()
        with pytest.raises(ImportError):
            c.submit(J.square_pid, (1,), (), ("no_such_module_ppc_xyz",))()
        assert c.submit(J.square_pid, (4,))()[0] == 16


# ------------------------------------------------------- refused / unreachable

@pytest.mark.timeout(30)
def test_wrong_secret_logged_and_jobs_fail_clearly(start_ppserver, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1)
    t0 = time.monotonic()
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret="not-the-secret") as c:
        job = c.submit(J.square_pid, (3,))
        with pytest.raises(pp.WorkerError) as info:
            job()
        assert time.monotonic() - t0 < 10
        assert "no node can run" in str(info.value)
        assert c.get_active_nodes() == {}
        assert wait_until(lambda: pp_errors(caplog), 5)
    errs = pp_errors(caplog)
    assert any(node.addr in m and "secret" in m for m in errs), errs
    # the node refused the client too, and said why
    assert wait_until(lambda: "binder does not verify" in node.log(), 5), node.log()


@pytest.mark.timeout(30)
def test_wrong_secret_node_not_used_next_to_good_one(start_ppserver, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    good = start_ppserver(workers=1)
    bad = start_ppserver(workers=1, secret="another-secret")
    with pp.Server(ncpus=0, ppservers=(good.addr, bad.addr), secret=SECRET) as c:
        jobs = [c.submit(J.square_pid, (i,)) for i in range(10)]
        assert [j()[0] for j in jobs] == [i * i for i in range(10)]
        assert wait_until(lambda: any(bad.addr in m for m in pp_errors(caplog)), 5)
        assert list(c.get_active_nodes()) == [good.addr]
        assert c.get_stats().get(bad.addr) is None or c.get_stats()[bad.addr].njobs == 0


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_unreachable_node_logged_and_jobs_fail_clearly(caplog):
    caplog.set_level(logging.INFO, logger="pp")
    addr = "127.0.0.1:%d" % free_port()  # nothing listens there
    t0 = time.monotonic()
    with pp.Server(ncpus=0, ppservers=(addr,), secret=SECRET) as c:
        job = c.submit(J.square_pid, (3,))
        with pytest.raises(pp.WorkerError) as info:
            job()
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        assert "no node can run" in str(info.value)
        assert c.get_active_nodes() == {}
    errs = pp_errors(caplog)
    assert any(addr in m and "refused" in m.lower() for m in errs), errs


@pytest.mark.timeout(30)
def test_unreachable_node_jobs_run_locally(caplog):
    caplog.set_level(logging.INFO, logger="pp")
    addr = "127.0.0.1:%d" % free_port()
    with pp.Server(ncpus=1, ppservers=(addr,), secret=SECRET) as c:
        assert [c.submit(J.square_pid, (i,))()[0] for i in range(5)] == [0, 1, 4, 9, 16]
        assert wait_until(lambda: pp_errors(caplog), 5)
        assert c.get_active_nodes() == {"local": 1}


# ------------------------------------------------------------------ lost nodes

@pytest.mark.timeout(40)
def test_node_killed_mid_run_jobs_rerun_locally(start_ppserver, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=2)
    with pp.Server(ncpus=1, ppservers=(node.addr,), secret=SECRET) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        jobs = [c.submit(J.sleep_then, (i, 0.3)) for i in range(12)]
        assert wait_until(lambda: c.get_stats()[node.addr].njobs >= 1, 10)
        workers = node.workers()
        node.signal(signal.SIGKILL)
        node.proc.wait(5)
        t0 = time.monotonic()
        assert [j()[0] for j in jobs] == list(range(12))
        assert time.monotonic() - t0 < 20
        warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("lost" in m and node.addr in m for m in warns), warns
        # its workers died with it
        assert wait_until(lambda: not any(alive(p) for p in workers), 5)
        # later jobs still run (locally)
        assert c.submit(J.square_pid, (5,))()[0] == 25


@pytest.mark.timeout(40)
def test_node_killed_jobs_move_to_second_node(start_ppserver):
    a = start_ppserver(workers=1)
    b = start_ppserver(workers=1)
    with pp.Server(ncpus=0, ppservers=(a.addr, b.addr), secret=SECRET) as c:
        assert wait_until(lambda: len(c.get_active_nodes()) == 2, 10)
        jobs = [c.submit(J.sleep_then, (i, 0.2)) for i in range(10)]
        assert wait_until(lambda: c.get_stats()[a.addr].njobs >= 1, 10)
        a.signal(signal.SIGKILL)
        assert [j()[0] for j in jobs] == list(range(10))
        assert c.get_active_nodes() == {b.addr: 1}


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_only_node_killed_jobs_fail_clearly_with_bounded_retries(start_ppserver):
    node = start_ppserver(workers=1)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        job = c.submit(J.sleep_then, (1, 30))
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        time.sleep(0.3)
        node.signal(signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(pp.WorkerError):
            job()
        assert time.monotonic() - t0 < 20


@pytest.mark.timeout(40)
def test_stopped_node_declared_dead_after_liveness(start_ppserver, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, args=["-k", "1"])
    with pp.Server(ncpus=1, ppservers=(node.addr,), secret=SECRET, socket_timeout=1) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        # fill both the local worker and the node
        jobs = [c.submit(J.sleep_then, (i, 0.4)) for i in range(6)]
        assert wait_until(lambda: c.get_stats()[node.addr].njobs >= 1, 10)
        node.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            assert [j()[0] for j in jobs] == list(range(6))
            assert time.monotonic() - t0 < 15
            warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert any(node.addr in m and "heartbeat" in m for m in warns), warns
        finally:
            node.signal(signal.SIGCONT)


@pytest.mark.timeout(30)
def test_job_longer_than_liveness_interval_succeeds(start_ppserver, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, args=["-k", "0.6"])
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET, socket_timeout=0.6) as c:
        t0 = time.monotonic()
        assert c.submit(J.sleep_then, (7, 2.5))()[0] == 7
        assert time.monotonic() - t0 < 10
        warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not warns, warns
        assert c.get_stats()[node.addr].njobs == 1
    assert "no heartbeat" not in node.log()


# ------------------------------------------------------------- hostile peers

def _legit_job_works(node):
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        return c.submit(J.square_pid, (9,))()[0] == 81


@pytest.mark.timeout(60)
def test_hostile_input_closes_connection_node_keeps_serving(start_ppserver):
    node = start_ppserver(workers=1)
    assert _legit_job_works(node)
    rss0 = rss_kb(node.pid)
    cases = {
        "garbage": os.urandom(4096),
        "unknown type": frame(99, b"x" * 10),
        "2^63 bytes": frame(F_HELLO, b"", length=1 << 63),
        "2^64-1 bytes": frame(F_JOB, b"", length=(1 << 64) - 1),
        "oversized hello": frame(F_HELLO, b"A" * 100000),
        "hello claiming 257": frame(F_HELLO, b"", length=257),
        "bad magic hello": frame(F_HELLO, b"XXXX" + bytes(36)),
        "job before auth": frame(F_JOB, bytes(16)),
        "truncated hello then garbage": frame(F_HELLO, hello_payload())[:30] + os.urandom(300),
        "TLS record of garbage": b"\x16\x03\x01\x01\x00" + os.urandom(256),
    }
    for name, data in cases.items():
        w = Wire(node.port)
        try:
            w.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert w.closed_by_peer(5), name
        w.close()
    # random frames with valid headers of every type, small lengths
    import random
    rnd = random.Random(1234)
    for i in range(200):
        w = Wire(node.port)
        t = rnd.choice([0, 1, 2, 3, 4, 5, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 200])
        payload = os.urandom(rnd.randrange(0, 300))
        try:
            w.send(frame(t, payload, fid=rnd.getrandbits(64), flags=rnd.getrandbits(8)))
            assert w.closed_by_peer(5), (i, t)
        except (BrokenPipeError, ConnectionResetError):
            pass
        w.close()
    # many connections that start a frame and go away
    for i in range(300):
        w = Wire(node.port)
        w.send(HDR.pack(200, 0, F_HELLO, 0, 0, 0) + b"x" * 100)
        w.close()
    assert _legit_job_works(node)
    assert node.proc.poll() is None
    growth = rss_kb(node.pid) - rss0
    assert growth < 20 * 1024, "ppserver RSS grew by %d kB" % growth


@pytest.mark.timeout(60)
def test_hostile_authenticated_frames(start_ppserver):
    node = start_ppserver(workers=1)
    assert _legit_job_works(node)
    rss0 = rss_kb(node.pid)
    # a JOB naming a function never sent: an error result, connection kept
    w = Wire(node.port)
    w.handshake(SECRET)
    w.send(frame(F_JOB, struct.pack("<Q", 12345) + b"args", fid=77))
    ftype, fid, flags, payload = w.recv_frame()
    while ftype == F_PING:
        ftype, fid, flags, payload = w.recv_frame()
    assert (ftype, fid) == (F_RESULT, 77) and flags != 0
    assert b"never sent" in payload
    # a garbage function blob and garbage args: the job's result is the
    # worker's exception (result kind "exception"), and the node lives
    w.send(frame(F_FUNC, os.urandom(64), fid=5))
    w.send(frame(F_JOB, struct.pack("<Q", 5) + os.urandom(32), fid=78))
    ftype, fid, flags, payload = w.recv_frame()
    while ftype == F_PING:
        ftype, fid, flags, payload = w.recv_frame()
    assert (ftype, fid) == (F_RESULT, 78), (ftype, fid, flags, payload)
    assert flags != 0 or b"Error" in payload, (flags, payload)
    # then a frame claiming 2^63 bytes: this connection closes
    w.send(frame(F_JOB, b"", length=1 << 63))
    assert w.closed_by_peer(5)
    w.close()
    # a WELCOME from a client is a protocol violation
    w = Wire(node.port)
    w.handshake(SECRET)
    w.send(frame(F_WELCOME, bytes(8)))
    assert w.closed_by_peer(5)
    w.close()
    # a short JOB frame
    w = Wire(node.port)
    w.handshake(SECRET)
    w.send(frame(F_JOB, b"abc", fid=1))
    assert w.closed_by_peer(5)
    w.close()
    for i in range(100):
        w = Wire(node.port)
        w.handshake(SECRET)
        w.send(HDR.pack(1 << 20, 9, F_JOB, 0, 0, 0) + b"y" * 65536)
        w.close()
    assert _legit_job_works(node)
    growth = rss_kb(node.pid) - rss0
    assert growth < 20 * 1024, "ppserver RSS grew by %d kB" % growth


@pytest.mark.timeout(30)
def test_wrong_client_secret_refused_by_node(start_ppserver):
    node = start_ppserver(workers=1)
    w = Wire(node.port)
    with pytest.raises(tlswire.TLSError):
        w.start_tls("wrong")
    assert w.closed_by_peer(5)
    w.close()
    assert wait_until(lambda: "wrong secret" in node.log(), 5), node.log()
    # a protocol version from the future: refused with a message, inside TLS
    w = Wire(node.port)
    w.start_tls(SECRET)
    w.send(frame(F_HELLO, hello_payload(version=99)))
    ftype, _, _, p = w.recv_frame()
    assert ftype == F_ERROR and b"protocol version 99" in p
    w.close()
    assert _legit_job_works(node)


# --------------------------------------------------------------- lost clients

CLIENT_SCRIPT = """
import sys, pp, cluster_jobs as J
c = pp.Server(ncpus=0, ppservers=(sys.argv[1],), secret=sys.argv[2])
jobs = [c.submit(J.sleep_then, (i, 60)) for i in range(6)]
import time
while c.get_stats().get(sys.argv[1]) is None:  # the 60 s jobs are pending meanwhile
    time.sleep(0.05)
print("submitted", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(40)
def test_client_killed_mid_run_node_frees_workers(start_ppserver, tmp_path):
    node = start_ppserver(workers=1)
    script = tmp_path / "victim.py"
    script.write_text(CLIENT_SCRIPT)
    env = child_env()
    env["PYTHONPATH"] = os.path.dirname(os.path.abspath(__file__)) + os.pathsep + env["PYTHONPATH"]
    victim = subprocess.Popen([sys.executable, str(script), node.addr, SECRET], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "submitted"
        # the node's only worker is busy with the victim's 60 s job
        assert wait_until(lambda: "authenticated" in node.log(), 5)
        time.sleep(0.5)
        victim.kill()
        victim.wait(5)
        t0 = time.monotonic()
        assert _legit_job_works(node)
        assert time.monotonic() - t0 < 8
        assert "dropped" in node.log(), node.log()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


# --------------------------------------------------- handshake: Python version

class FakeNode:
    """A TCP server in this process speaking the node's side of the
    handshake with the given Python version, then answering every JOB with
    a RESULT error naming itself."""

    def __init__(self, secret, py=(2, 7), version=PROTO_VERSION):
        self.secret, self.py, self.version = secret, py, version
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.jobs = []
        self.funcs = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.lsock.settimeout(0.2)
        while not self.stop:
            try:
                s, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        w = Wire.__new__(Wire)
        w.sock, w.buf, w.tls = s, b"", None
        s.settimeout(30)
        try:
            salt = os.urandom(16)
            s.sendall(tlswire.preamble(salt))
            w.tls = tlswire.TLS(s, tlswire.derive(self.secret, salt), server=True)
            ftype, _, _, p = w.recv_frame()
            assert ftype == F_HELLO
            w.send(frame(F_WELCOME, welcome_payload(1, 60000, self.version, self.py)))
            while not self.stop:
                ftype, fid, flags, p = w.recv_frame()
                if ftype == F_FUNC:
                    self.funcs.append(fid)
                elif ftype == F_JOB:
                    self.jobs.append(fid)
                    w.send(frame(F_RESULT, b"fake node cannot run jobs", fid=fid, flags=3))
                elif ftype == F_BYE:
                    return
        except (EOFError, OSError, AssertionError, tlswire.TLSError):
            pass
        finally:
            if w.tls:
                w.tls.close()
            s.close()

    def close(self):
        self.stop = True
        self.lsock.close()


@pytest.fixture
def fake_node():
    yield from tracked(FakeNode, FakeNode.close)


@pytest.mark.timeout(30)
def test_python_version_mismatch_is_named_and_code_objects_stay_home(fake_node, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = fake_node(secret=SECRET, py=(2, 7))
    with pp.Server(ncpus=1, ppservers=(node.addr,), secret=SECRET) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        msgs = [r.getMessage() for r in caplog.records if r.name == "pp"]
        warn = [m for m in msgs if node.addr in m and "Python" in m]
        assert warn, msgs
        assert "2.7" in warn[0] and "%d.%d" % sys.version_info[:2] in warn[0]
        # a lambda travels as a code object: never sent to the other Python
        jobs = [c.submit(lambda x: x * 3, (i,)) for i in range(10)]
        assert [j() for j in jobs] == [i * 3 for i in range(10)]
        assert node.jobs == []


@pytest.mark.timeout(30)
def test_python_version_mismatch_only_node_fails_code_objects_clearly(fake_node):
    node = fake_node(secret=SECRET, py=(2, 7))
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        t0 = time.monotonic()
        with pytest.raises(pp.WorkerError):
            c.submit(lambda x: x, (1,))()
        assert time.monotonic() - t0 < 10
        assert node.jobs == []


@pytest.mark.timeout(30)
def test_protocol_version_mismatch_is_named(fake_node, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = fake_node(secret=SECRET, py=sys.version_info[:2], version=7)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        with pytest.raises(pp.WorkerError):
            c.submit(J.square_pid, (1,))()
    errs = pp_errors(caplog)
    assert any(node.addr in m and "protocol version 7" in m for m in errs), errs


@pytest.mark.timeout(30)
def test_fake_node_without_secret_cannot_lure_jobs(fake_node, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = fake_node(secret="i-do-not-know-it", py=sys.version_info[:2])
    with pp.Server(ncpus=1, ppservers=(node.addr,), secret=SECRET) as c:
        assert [c.submit(J.square_pid, (i,))()[0] for i in range(5)] == [0, 1, 4, 9, 16]
        assert wait_until(lambda: any(node.addr in m for m in pp_errors(caplog)), 5)
    assert node.jobs == [] and node.funcs == []


@pytest.mark.timeout(30)
def test_node_without_workers_jobs_fail_clearly(start_ppserver, caplog):
    """A ppserver -w 0 is connected but has no slots: with no other node a
    job fails at once (it used to wait forever: the node counted as one
    that might still run it)."""
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=0)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        t0 = time.monotonic()
        with pytest.raises(pp.WorkerError, match="no node can run"):
            c.submit(J.square_pid, (2,))()
        assert time.monotonic() - t0 < 5
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(node.addr in m and "no workers" in m for m in msgs), msgs


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_stopped_only_node_jobs_fail_clearly(start_ppserver):
    """SIGSTOP the only node: lost after the liveness interval, the
    reconnection's handshake times out (the kernel still accepts), and the
    job fails instead of waiting for ever."""
    node = start_ppserver(workers=1, args=["-k", "1"])
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET, socket_timeout=1) as c:
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        job = c.submit(J.sleep_then, (1, 2))
        time.sleep(0.3)
        node.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(pp.WorkerError):
                job()
            assert time.monotonic() - t0 < 25
        finally:
            node.signal(signal.SIGCONT)


@pytest.mark.timeout(30)
def test_client_liveness_shorter_than_node_heartbeat(start_ppserver, caplog):
    """The client's socket_timeout (1 s) is shorter than the node's own
    heartbeat period (the default -k 3600 gives one PING per 5 s): the
    client's PINGs must be answered, or a 3 s job looks like a dead node."""
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1)
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET, socket_timeout=1) as c:
        assert c.submit(J.sleep_then, (5, 3))()[0] == 5
        warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not warns, warns
        assert c.get_stats()[node.addr].njobs == 1


@pytest.mark.timeout(60)
def test_idle_strangers_cannot_fill_the_node(start_ppserver):
    # 200 connections that never say a word: beyond 16 in the handshake from
    # one address its oldest are pushed out at once (not after the 10 s
    # handshake limit), and a real client is served meanwhile
    node = start_ppserver(workers=1)
    idle = [Wire(node.port) for _ in range(200)]
    try:
        t0 = time.monotonic()
        assert _legit_job_works(node)
        assert time.monotonic() - t0 < 8
        # at most 16 may still be waiting in the handshake (the accept order
        # need not be the connect order, so count them all)
        still = sum(1 for w in idle if not w.closed_by_peer(0.05))
        assert 1 <= still <= 16, still
    finally:
        for w in idle:
            w.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_trickling_bytes_do_not_extend_the_handshake(start_ppserver):
    # a peer sending one byte of a TLS record every half second is still
    # cut off 10 s after it connected
    node = start_ppserver(workers=1)
    w = Wire(node.port)
    data = b"\x16\x03\x01\x02\x00\x01" + bytes(600)
    t0 = time.monotonic()
    cut = None
    for b in data:
        try:
            w.send(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            cut = time.monotonic() - t0
            break
        if w.closed_by_peer(0.5):
            cut = time.monotonic() - t0
            break
    w.close()
    assert cut is not None and 9 <= cut < 14, cut
    assert _legit_job_works(node)


def test_node_used_locally_too_keeps_functions_and_jobs_apart(fresh_server):
    # A Server that both runs jobs of its own and serves remote clients
    # (_listen): the ids it gives what it relays must not meet the ids of
    # its own jobs and functions in the workers they share.
    node = fresh_server(1, secret=SECRET, _listen=("127.0.0.1", 0))
    port = node._server_info()[0]
    assert [node.submit(J.divide, (6, k))() for k in (1, 2, 3)] == [6.0, 3.0, 2.0]
    s = fresh_server(0, ppservers=("127.0.0.1:%d" % port,), secret=SECRET)
    assert wait_until(lambda: s.get_active_nodes().get("127.0.0.1:%d" % port), timeout=20)
    # the client's first function and jobs get the node's first relay ids
    assert [s.submit(J.square_pid, (k,))()[0] for k in range(5)] == [0, 1, 4, 9, 16]
    mine = [node.submit(J.divide, (12, k)) for k in (1, 2, 3)]
    theirs = [s.submit(J.square_pid, (k,)) for k in range(3)]
    assert [j() for j in mine] == [12.0, 6.0, 4.0]
    assert [j()[0] for j in theirs] == [0, 1, 4]
