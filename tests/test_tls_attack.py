"""The client <-> ppserver link under attack, through real processes on
loopback (src/core/tls.h, README "Security"). The attacker is a relay on
127.0.0.2 between the client and the node (tests/tlsrelay.py), or a
stranger on 127.0.0.3 and up:

  * frames injected into the client's stream after the handshake: the node
    refuses the connection (TLS record check), runs nothing, logs why; the
    job reruns and the client gets its right result;
  * a bit flipped in a RESULT on its way back: the client drops the
    connection, logs why, and the job reruns: never the altered result;
  * a recorded job's traffic holds neither its distinctive argument nor
    its result in the clear;
  * a forged ERROR during the handshake: retried with backoff, not a node
    disabled for the Server's life;
  * what a stranger gets before proving anything: the 24-byte preamble;
  * half-open connections: fair per source address, not clients for -t,
    and new clients keep getting results during a flood;
  * certificate mode: works with a CA made here, refuses a certificate of
    another CA, both ways.
"""
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

import pp
import tls_jobs as T
import tlswire
from clusterutil import F_ERROR, PPServer, Wire, frame, rss_kb, start_ppserver  # noqa: F401
from conftest import tracked, _wait_until as wait_until
from tlsrelay import Relay

SECRET = "tls-attack-suite-secret-0123456789"
F_FUNC, F_JOB = 2, 3


def pp_records(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.name == "pp" and r.levelno >= level]


def _can_bind(host):
    s = socket.socket()
    try:
        s.bind((host, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


pytestmark = pytest.mark.skipif(not _can_bind("127.0.0.2"),
                                reason="needs 127.0.0.2 (the attacker's address) on loopback")


@pytest.fixture
def relay():
    yield from tracked(Relay, Relay.close)


# ----------------------------------------------------------- on-path relay

@pytest.mark.timeout(30)
def test_injected_frames_run_nothing_and_the_job_reruns(start_ppserver, relay, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, secret=SECRET)
    trace = tmp_path / "runs.txt"
    # what an attacker would have sent before TLS: a function blob and a job
    # that runs it (here any bytes in the shape of the frames)
    evil = frame(F_FUNC, b"\x80\x05evil-function-blob", fid=1) + \
        frame(F_JOB, (1).to_bytes(8, "little") + b"evil-args", fid=4242)
    r = relay(node.port, mode="inject", payload=evil, after=1500)
    big = "x" * 20000  # the job's own data takes the client's stream past 1500 bytes
    with pp.Server(ncpus=0, ppservers=(r.addr,), secret=SECRET, socket_timeout=10) as c:
        job = c.submit(T.append_line, (str(trace), "legit " + big[:10] + big))
        assert job() == "legit " + big[:10] + big
    assert r.tampered.is_set() and r.nconn >= 2  # tampered, then a clean reconnect
    # the job ran once, on the clean connection; the injected one never did
    assert trace.read_text().count("legit") == 1
    assert "evil" not in trace.read_text()
    assert wait_until(lambda: "altered or injected" in node.log(), 5), node.log()
    warns = pp_records(caplog)
    assert any(r.addr in m and "rescheduled" in m for m in warns), warns


@pytest.mark.timeout(30)
def test_flipped_result_bit_is_never_accepted(start_ppserver, relay, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, secret=SECRET)
    r = relay(node.port, mode="flip", after=3000)
    arg = "R" * 50000  # the RESULT (the echo) takes the node's stream past 3000 bytes
    with pp.Server(ncpus=0, ppservers=(r.addr,), secret=SECRET, socket_timeout=10) as c:
        got, pid = c.submit(T.echo_tagged, (arg,))()
        assert got == arg  # the true result: rerun after the altered one was refused
    assert r.tampered.is_set() and r.nconn >= 2
    warns = pp_records(caplog)
    assert any(r.addr in m and "altered or injected" in m for m in warns), warns


@pytest.mark.timeout(30)
def test_recorded_traffic_holds_no_argument_or_result_in_the_clear(start_ppserver, relay):
    node = start_ppserver(workers=1, secret=SECRET)
    r = relay(node.port)
    tag = "PPC-DISTINCTIVE-ARGUMENT-7f3a9c"
    with pp.Server(ncpus=0, ppservers=(r.addr,), secret=SECRET) as c:
        jobs = [c.submit(T.echo_tagged, (tag + str(i) + "-" * 2000,)) for i in range(20)]
        assert all(j()[0].startswith(tag) for j in jobs)
    c2s, s2c = bytes(r.c2s), bytes(r.s2c)
    assert len(c2s) > 20 * 2000 and len(s2c) > 20 * 2000  # the jobs went through the relay
    for data in (c2s, s2c):
        assert tag.encode() not in data
        assert b"echo_tagged" not in data and b"tls_jobs" not in data
        assert SECRET.encode() not in data
    assert s2c[:4] == b"PPCT"  # only the preamble is in the clear


@pytest.mark.timeout(30)
def test_forged_error_in_handshake_is_retried_not_fatal(start_ppserver, relay, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, secret=SECRET)
    r = relay(node.port, mode="break", payload=frame(F_ERROR, b"authentication failed"))
    with pp.Server(ncpus=0, ppservers=(r.addr,), secret=SECRET) as c:
        t0 = time.monotonic()
        assert c.submit(T.echo_tagged, ("after a forged error",))()[0] == "after a forged error"
        assert time.monotonic() - t0 < 10
    assert r.tampered.is_set() and r.nconn >= 2
    errs = pp_records(caplog, logging.ERROR)
    assert any(r.addr in m for m in errs), errs  # the failed attempt was logged


@pytest.mark.timeout(30)
def test_downgrade_to_cleartext_is_refused(start_ppserver, relay, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    node = start_ppserver(workers=1, secret=SECRET)
    r = relay(node.port, mode="downgrade")
    with pp.Server(ncpus=0, ppservers=(r.addr,), secret=SECRET) as c:
        with pytest.raises(pp.WorkerError):
            c.submit(T.echo_tagged, ("never in the clear",))()
    assert r.tampered.is_set()
    errs = pp_records(caplog, logging.ERROR)
    assert any(r.addr in m and "no TLS" in m for m in errs), errs
    assert b"PPC\x02" not in bytes(r.c2s) and b"never in the clear" not in bytes(r.c2s)


# ---------------------------------------------------------------- strangers

@pytest.mark.timeout(30)
def test_a_stranger_gets_only_the_preamble(start_ppserver):
    node = start_ppserver(workers=1, secret=SECRET)
    salts = []
    for _ in range(2):
        w = Wire(node.port, source="127.0.0.3")
        salts.append(tlswire.read_preamble(w.sock))
        w.sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            w.sock.recv(1)  # nothing more until the stranger speaks TLS
        w.close()
    assert salts[0] == salts[1] and len(salts[0]) == 16  # one salt per node process
    # a wrong guess costs the guesser a full scrypt, and the node refuses it
    w = Wire(node.port, source="127.0.0.3")
    t0 = time.monotonic()
    with pytest.raises(tlswire.TLSError):
        w.start_tls("guess-1")
    w.close()
    assert wait_until(lambda: "refused" in node.log(), 5)


def _idle(port, source, n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def _open(sock, timeout=0.05):
    """Still open: the node has not closed it (preamble bytes skipped)."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(4096):
                return False
    except socket.timeout:
        return True
    except OSError:
        return False


@pytest.mark.timeout(30)
def test_handshake_slots_are_fair_per_address(start_ppserver):
    node = start_ppserver(workers=1, secret=SECRET)
    victims = _idle(node.port, "127.0.0.4", 5)
    time.sleep(0.3)
    flood = _idle(node.port, "127.0.0.5", 300)
    try:
        time.sleep(0.5)
        assert all(_open(s) for s in victims)  # never evicted by another address
        still = sum(_open(s, 0.01) for s in flood)
        assert 1 <= still <= 16, still  # the flooder only evicts its own
    finally:
        for s in victims + flood:
            s.close()


@pytest.mark.timeout(60)
def test_half_open_flood_while_clients_keep_getting_results(start_ppserver):
    node = start_ppserver(workers=1, secret=SECRET)
    rss0 = rss_kb(node.pid)
    stop = threading.Event()
    opened = [0]

    def flood():
        held = []
        while not stop.is_set():
            try:
                held += _idle(node.port, "127.0.0.6", 20)
                opened[0] += 20
            except OSError:
                time.sleep(0.01)
            if len(held) > 400:
                for s in held[:200]:
                    s.close()
                del held[:200]
        for s in held:
            s.close()

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        round_ = 0
        while round_ < 4 or (opened[0] < 600 and round_ < 40):
            # a fresh handshake each round, under the flood
            round_ += 1
            t0 = time.monotonic()
            with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
                jobs = [c.submit(T.echo_tagged, ("r%d-%d" % (round_, i),)) for i in range(20)]
                assert [j()[0] for j in jobs] == ["r%d-%d" % (round_, i) for i in range(20)]
            assert time.monotonic() - t0 < 8
    finally:
        stop.set()
        t.join(10)
    assert opened[0] > 500
    growth = rss_kb(node.pid) - rss0
    assert growth < 30 * 1024, "ppserver RSS grew by %d kB" % growth


@pytest.mark.timeout(30)
def test_strangers_in_the_handshake_do_not_keep_an_idle_node_alive(start_ppserver):
    node = start_ppserver(workers=1, secret=SECRET, args=["-t", "2"])
    held = []
    t0 = time.monotonic()
    while node.proc.poll() is None and time.monotonic() - t0 < 15:
        try:
            held += _idle(node.port, "127.0.0.7", 1)
        except OSError:
            pass
        time.sleep(0.2)
    for s in held:
        s.close()
    assert node.proc.poll() is not None, "the node never went idle"
    assert time.monotonic() - t0 < 8
    assert "no client" in node.log()


# -------------------------------------------------------------- certificates

def _make_ca(d, name):
    """A CA and a node and a client certificate it signed (openssl CLI)."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ca = d / ("%s-ca" % name)
    run("req", "-x509", *key, "-keyout", "%s.key" % ca, "-out", "%s.pem" % ca, "-days", "2",
        "-subj", "/CN=%s test CA" % name)
    out = {"ca": "%s.pem" % ca}
    for who in ("node", "client"):
        p = d / ("%s-%s" % (name, who))
        run("req", *key, "-keyout", "%s.key" % p, "-out", "%s.csr" % p, "-subj",
            "/CN=%s %s" % (name, who))
        run("x509", "-req", "-in", "%s.csr" % p, "-CA", "%s.pem" % ca, "-CAkey", "%s.key" % ca,
            "-CAcreateserial", "-out", "%s.pem" % p, "-days", "2")
        out[who] = ("%s.pem" % p, "%s.key" % p)
    return out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.timeout(60)
def test_certificate_mode_and_a_foreign_ca(start_ppserver, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="pp")
    a, b = _make_ca(tmp_path, "a"), _make_ca(tmp_path, "b")

    def node_args(ca):
        return ["--certfile", ca["node"][0], "--keyfile", ca["node"][1], "--cafile", ca["ca"]]

    def client(ca, trust, addr):
        return pp.Server(ncpus=0, ppservers=(addr,), certfile=ca["client"][0],
                         keyfile=ca["client"][1], cafile=trust["ca"])

    node = start_ppserver(workers=1, secret=None, args=node_args(a), env={"PP_SECRET": ""})
    assert "certificates" in node.log()
    with client(a, a, node.addr) as c:
        assert c.submit(T.echo_tagged, ("cert",))()[0] == "cert"
    # a client whose certificate another CA signed: refused by the node
    with client(b, a, node.addr) as c:
        with pytest.raises(pp.WorkerError):
            c.submit(T.echo_tagged, ("no",))()
    assert wait_until(lambda: "certificate verify failed" in node.log(), 5), node.log()
    # a node whose certificate another CA signed: refused by the client
    other = start_ppserver(workers=1, secret=None, args=node_args(b), env={"PP_SECRET": ""})
    caplog.clear()
    with client(a, a, other.addr) as c:
        with pytest.raises(pp.WorkerError):
            c.submit(T.echo_tagged, ("no",))()
    errs = pp_records(caplog, logging.ERROR)
    assert any(other.addr in m and "TLS" in m for m in errs), errs
    # a client with a secret against a node with certificates: a clear error
    caplog.clear()
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret=SECRET) as c:
        with pytest.raises(pp.WorkerError):
            c.submit(T.echo_tagged, ("no",))()
    errs = pp_records(caplog, logging.ERROR)
    assert any("certificates" in m for m in errs), errs
    # discovery with certificates and no secret: announcements would be MACed
    # with an empty key anyone can forge, so it is refused
    monkeypatch.delenv("PP_SECRET", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pythonrc.py secret either
    with pytest.raises(Exception) as info:
        pp.Server(ncpus=0, ppservers=("*",), secret=None, certfile=a["client"][0],
                  keyfile=a["client"][1], cafile=a["ca"])
    assert "discovery needs the cluster secret" in str(info.value)


@pytest.mark.timeout(30)
def test_incomplete_certificate_options_are_refused():
    with pytest.raises(ValueError):
        pp.Server(ncpus=0, ppservers=("127.0.0.1:1",), certfile="/nonexistent.pem")
    with pytest.raises((OSError, ValueError, RuntimeError)) as info:
        pp.Server(ncpus=0, ppservers=("127.0.0.1:1",), certfile="/nonexistent.pem",
                  keyfile="/nonexistent.key", cafile="/nonexistent-ca.pem")
    assert "nonexistent" in str(info.value)
