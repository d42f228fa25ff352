"""Autodiscovery (ARCHITECTURE.md "Autodiscovery"): ``ppserver -a`` and
clients with ppservers=("*",), as a user and as an attacker on the network
without the secret (127.0.0.2 is the attacker's address on loopback):

  * over loopback: a node announcing on 127.255.255.255 is found and used;
    with -i its UDP sockets are bound to that address and its subnet's
    broadcast address, never to INADDR_ANY;
  * forged announcements (wrong key, stale, wrong version or length, junk,
    an address that is not the sender's, one pointing to the attacker, an
    answer to someone else's query) never make a client connect; a valid
    one does (the control);
  * a captured announcement replayed from another address, or later, is
    ignored, and so is one seen twice; the key is scrypt of the secret
    (these tests compute it with hashlib.scrypt);
  * a query flood gets few answers, none larger than its query; old 8-byte
    queries and short ones get none;
  * junk datagrams flooding a client in its window leave its memory flat
    while it keeps running jobs; after the window it has no socket at all;
  * "127.0.0.*" refuses announcements from outside that subnet, "*:port"
    connects only to that port, malformed entries are refused;
  * a discovered node that dies expires; rescan() finds it again;
  * the engine follows the pp logger's level when it changes;
  * across two network namespaces joined by a veth pair (10.213.7.0/24,
    inside the namespaces only), when running as root with ``ip``: the
    client finds the node by broadcast and runs jobs there, and the node
    does not answer a query from outside its subnet.
"""
import hashlib
import hmac
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

import pp
import cluster_jobs as J
import netnsutil
from clusterutil import PPServer, TESTS_DIR, free_port, start_ppserver  # noqa: F401
from conftest import child_env, _wait_until as wait_until

SECRET = "discovery-secret"
LOOP_BCAST = "127.255.255.255"
ANN_LEN = 84  # announce.h PPC_ANNOUNCE_LEN == PPC_QUERY_LEN
VERSION = 3   # PPC_ANNOUNCE_VERSION


def ann_key(secret):
    """The announcement key: scrypt(secret, salt), as announce.c derives it."""
    return hashlib.scrypt(secret.encode(), salt=b"ppc-announce-key-v3", n=32768, r=8, p=1,
                          maxmem=80 << 20, dklen=32)


KEY = ann_key(SECRET)


def announcement(key, addr, port, when=None, nonce=None, echo=bytes(16), version=VERSION):
    body = (b"PPCA" + struct.pack("<HH", version, port) + socket.inet_aton(addr)
            + struct.pack("<Q", int(time.time() if when is None else when))
            + (nonce or os.urandom(16)) + echo)
    return body + hmac.new(key, b"ppc-announce" + body, hashlib.sha256).digest()


def parse_announcement(key, data):
    """(addr, port, time, nonce, echo) of a valid announcement, else None."""
    if len(data) != ANN_LEN or data[:4] != b"PPCA":
        return None
    body, tag = data[:52], data[52:]
    if not hmac.compare_digest(tag, hmac.new(key, b"ppc-announce" + body,
                                             hashlib.sha256).digest()):
        return None
    _, port = struct.unpack_from("<HH", body, 4)
    return (socket.inet_ntoa(body[8:12]), port, struct.unpack_from("<Q", body, 12)[0],
            body[20:36], body[36:52])


def query(nonce=None):
    q = b"PPCQ" + struct.pack("<HH", VERSION, 0) + (nonce or os.urandom(16))
    return q + bytes(ANN_LEN - len(q))


def discovery_config(tmp_path, udp_port, broadcast):
    cfg = tmp_path / ("disc-%d.conf" % udp_port)
    cfg.write_text("[network]\nautodiscovery = true\nbroadcast = %s\ndiscovery_port = %d\n"
                   % (broadcast, udp_port))
    return str(cfg)


def client(udp, ppservers=("*",), ncpus=1, **test):
    return pp.Server(ncpus=ncpus, ppservers=ppservers, secret=SECRET, _discover_port=udp,
                     _broadcast=LOOP_BCAST, _test=test or None)


def bait(host="127.0.0.1", port=0):
    """A TCP listener standing where an announcement points."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(8)
    return s


def accepts(lsock, timeout):
    lsock.settimeout(timeout)
    try:
        s, _ = lsock.accept()
    except socket.timeout:
        return False
    s.close()
    return True


def udp_from(addr="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    return s


def ignored_counts(text):
    """Sum of the counts in the client's "discovery: ignored" summaries, by
    reason."""
    out = {}
    for line in re.findall(r"discovery: ignored \d+ datagram\(s\): (.*)", text):
        for n, what in re.findall(r"(\d+) ([^,]+)", line):
            out[what.strip()] = out.get(what.strip(), 0) + int(n)
    return out


# ------------------------------------------------------------------ as a user

@pytest.mark.timeout(30)
def test_loopback_autodiscovery(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    node = start_ppserver(workers=2, secret=SECRET,
                          args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    assert "announcing" in node.log()
    with client(udp, ncpus=0) as c:
        jobs = [c.submit(J.square_pid, (i,)) for i in range(10)]
        assert [j()[0] for j in jobs] == [i * i for i in range(10)]
        assert c.get_active_nodes() == {node.addr: 2}


def udp_binds(pid):
    """Local (addr, port) of the UDP sockets process pid holds."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    with open("/proc/%d/net/udp" % pid) as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                a, p = fields[1].split(":")
                out.append((socket.inet_ntoa(struct.pack("<I", int(a, 16))), int(p, 16)))
    return out


@pytest.mark.timeout(30)
def test_node_binds_its_interface_not_any(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    node = start_ppserver(workers=1, secret=SECRET,
                          args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    binds = [b for b in udp_binds(node.pid) if b[1] == udp]
    assert sorted(binds) == [("127.0.0.1", udp), ("127.255.255.255", udp)], binds


@pytest.mark.timeout(30)
def test_loopback_node_with_other_secret_not_used(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    start_ppserver(workers=1, secret="other-secret",
                   args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    with client(udp) as c:
        time.sleep(1.0)  # its announcements arrive (query answered, broadcast every 3 s)
        assert c.submit(J.square_pid, (3,))()[0] == 9
        assert c.get_active_nodes() == {"local": 1}


@pytest.mark.timeout(30)
def test_malformed_entries_refused():
    for bad in ("1*2", "192.168.1.2.*", "*.1", "*:0", "*:70000", "**", "10.*.1.*"):
        with pytest.raises(ValueError, match="discovery entry"):
            pp.Server(ncpus=0, ppservers=(bad,), secret=SECRET)


# ---------------------------------------------------------------- as attacker

@pytest.mark.timeout(30)
def test_forged_announcements_do_not_lure_client(caplog):
    caplog.set_level(logging.INFO, logger="pp")
    udp = free_port(socket.SOCK_DGRAM)
    good, evil = bait("127.0.0.1"), bait("127.0.0.2")
    gport, eport = good.getsockname()[1], evil.getsockname()[1]
    tx, atk = udp_from("127.0.0.1"), udp_from("127.0.0.2")
    wrong_key = ann_key("wrong-secret")
    try:
        with client(udp, discovery_window_ms=20000) as c:
            valid = announcement(KEY, "127.0.0.1", gport)
            moved = bytearray(valid)
            moved[8:12] = socket.inet_aton("127.0.0.2")  # now points to the attacker
            forged = [
                (tx, announcement(wrong_key, "127.0.0.1", gport)),
                (tx, announcement(KEY, "127.0.0.1", gport, when=time.time() - 3600)),
                (tx, announcement(KEY, "127.0.0.1", gport, version=2)),
                (tx, valid[:-1]),
                (tx, os.urandom(ANN_LEN)),
                (tx, b"PPCA" + os.urandom(ANN_LEN - 4)),
                # a valid MAC, but the sender is not the announced address
                (atk, announcement(KEY, "127.0.0.1", gport)),
                (tx, announcement(KEY, "127.0.0.2", eport)),
                # pointing to the attacker, from the attacker, without the key
                (atk, announcement(wrong_key, "127.0.0.2", eport)),
                (atk, bytes(moved)),
                # an answer to a query this client never sent
                (tx, announcement(KEY, "127.0.0.1", gport, echo=os.urandom(16))),
            ]
            for sock, bad in forged:
                for _ in range(3):
                    sock.sendto(bad, ("127.0.0.1", udp))
            assert not accepts(good, 1.5), "a forged announcement lured the client"
            assert not accepts(evil, 0.1), "the client connected to the attacker"
            assert c.get_active_nodes() == {"local": 1}
            # the control: the right key and sender make it connect
            tx.sendto(valid, ("127.0.0.1", udp))
            assert accepts(good, 5), "a valid announcement was ignored"
            assert not accepts(evil, 0.1)
            # the last kind sent: once counted, so are all before it
            assert wait_until(lambda: ignored_counts(caplog.text).get("answering another query")
                              == 3, 12), caplog.text
            counts = ignored_counts(caplog.text)
            assert counts.get("bad MAC") == 15 and counts.get("malformed") == 6, counts
            assert counts.get("sender not the announced address") == 6, counts
            assert counts.get("stale") == 3, counts
    finally:
        for s in (good, evil, tx, atk):
            s.close()


@pytest.mark.timeout(40)
def test_replayed_announcement_ignored(start_ppserver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    udp = free_port(socket.SOCK_DGRAM)
    cap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    cap.bind(("0.0.0.0", udp))
    cap.settimeout(5)
    node = start_ppserver(workers=1, secret=SECRET,
                          args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    # capture one of its broadcasts (unasked: no query echoed)
    deadline = time.monotonic() + 8
    captured = None
    while captured is None and time.monotonic() < deadline:
        data, src = cap.recvfrom(512)
        a = parse_announcement(KEY, data)
        if a and a[4] == bytes(16):
            captured, captured_at = data, time.time()
    cap.close()
    assert captured is not None, "no announcement captured"
    assert parse_announcement(KEY, captured)[:2] == ("127.0.0.1", node.port)
    node.stop()
    # where the replay would make a client connect: the node's address and
    # the replaying attacker's
    b1, b2 = bait("127.0.0.1", node.port), bait("127.0.0.2", node.port)
    tx, atk = udp_from("127.0.0.1"), udp_from("127.0.0.2")
    try:
        with client(udp, ncpus=1, discovery_window_ms=20000, announce_max_age_s=2) as c:
            atk.sendto(captured, ("127.0.0.1", udp))  # from another address
            assert not accepts(b1, 1.0) and not accepts(b2, 0.1)
            time.sleep(max(0.0, captured_at + 3.2 - time.time()))
            tx.sendto(captured, ("127.0.0.1", udp))  # later: past its validity
            assert not accepts(b1, 1.0) and not accepts(b2, 0.1)
            # control: a fresh announcement is taken once, its copy never
            fresh = announcement(KEY, "127.0.0.1", node.port)
            tx.sendto(fresh, ("127.0.0.1", udp))
            assert accepts(b1, 5)
            tx.sendto(fresh, ("127.0.0.1", udp))
            assert wait_until(lambda: ignored_counts(caplog.text).get("replayed") == 1, 12), \
                caplog.text
            counts = ignored_counts(caplog.text)
            assert counts.get("sender not the announced address") == 1, counts
            assert counts.get("stale") == 1, counts
            assert c.get_active_nodes() == {"local": 1}
    finally:
        for s in (b1, b2, tx, atk):
            s.close()


@pytest.mark.timeout(30)
def test_query_flood_gets_few_answers_no_larger_than_queries(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    node = start_ppserver(workers=1, secret=SECRET,
                          args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    senders = [udp_from("127.0.0.%d" % (2 + i)) for i in range(20)]
    try:
        # old 8-byte queries, short and padded-with-junk ones: no answer
        s0 = senders[0]
        s0.settimeout(1.0)
        for bad in (b"PPCQ\x01\x00\x00\x00", query()[:-1], query()[:-1] + b"\x01"):
            s0.sendto(bad, ("127.0.0.1", udp))
        with pytest.raises(socket.timeout):
            s0.recvfrom(512)
        t0 = time.monotonic()
        nonces = {}
        for rnd in range(100):
            for s in senders:
                n = os.urandom(16)
                nonces[n] = s
                s.sendto(query(n), ("127.0.0.1", udp))
        sent = 100 * len(senders)
        answers = []
        end = time.monotonic() + 1.5
        for s in senders:
            s.setblocking(False)
        while time.monotonic() < end:
            for s in senders:
                try:
                    data, src = s.recvfrom(512)
                except BlockingIOError:
                    continue
                answers.append((s, data, src))
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        print("query flood: %d queries from %d sources, %d answers in %.1f s"
              % (sent, len(senders), len(answers), elapsed))
        assert answers, "no query was answered"
        # global bucket: 50 at once, 50 a second; per source one per 0.5 s
        assert len(answers) <= min(sent, 50 + 50 * elapsed + 5), (len(answers), elapsed)
        assert len(answers) <= len(senders) * (1 + elapsed / 0.5 + 1)
        for s, data, src in answers:
            assert len(data) <= ANN_LEN
            a = parse_announcement(KEY, data)
            assert a is not None
            assert src[0] == a[0] == "127.0.0.1" and a[1] == node.port
            assert nonces[a[4]] is s  # it answers that sender's own query
    finally:
        for s in senders:
            s.close()


FLOOD_CLIENT = """
import os, sys, time, logging
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
import pp, cluster_jobs as J
udp, flag = int(sys.argv[1]), sys.argv[2]
def rss():
    with open("/proc/self/status") as f:
        return [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
with pp.Server(ncpus=1, ppservers=("*",), secret="%s", _discover_port=udp,
               _broadcast="127.255.255.255", _test={"discovery_window_ms": 25000}) as c:
    for i in range(300):
        assert c.submit(J.square_pid, (i,))()[0] == i * i
    before = rss()
    print("READY", before, flush=True)
    n = 0
    while not os.path.exists(flag):
        jobs = [c.submit(J.square_pid, (i,)) for i in range(50)]
        assert [j()[0] for j in jobs] == [i * i for i in range(50)]
        n += 50
    time.sleep(0.5)
    print("DONE", before, rss(), n, flush=True)
""" % SECRET


@pytest.mark.timeout(60)
def test_junk_flood_in_window_memory_flat(tmp_path):
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("RSS says nothing under ASan: its quarantine keeps freed memory")
    udp = free_port(socket.SOCK_DGRAM)
    script = tmp_path / "flood_client.py"
    script.write_text(FLOOD_CLIENT)
    flag = tmp_path / "stop"
    env = child_env()
    env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env["PYTHONPATH"]
    p = subprocess.Popen([sys.executable, str(script), str(udp), str(flag)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY"), line + p.stderr.read()
        tx = udp_from("127.0.0.2")
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        junk = [os.urandom(n) for n in (1, 8, 64, 83, 85, 400)]
        junk += [b"PPCA" + os.urandom(ANN_LEN - 4),  # reaches the MAC check
                 announcement(ann_key("wrong"), "127.0.0.2", 1),
                 announcement(KEY, "127.0.0.1", 1)]  # sender is not the address
        sent = 0
        t0 = time.monotonic()
        while sent < 150000 and time.monotonic() - t0 < 15:
            for j in junk:
                try:
                    tx.sendto(j, ("127.0.0.1", udp))
                    sent += 1
                except (BlockingIOError, OSError):
                    time.sleep(0.001)
        tx.close()
        time.sleep(1.0)
        flag.write_text("x")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, out + err
        done = out.split()
        assert done[0] == "DONE", out + err
        before, after, njobs = int(done[1]), int(done[2]), int(done[3])
        assert sent >= 100000
        assert njobs > 0  # it kept getting results during the flood
        seen = sum(ignored_counts(err).values())
        assert seen >= 20000, (seen, err[-2000:])  # the flood reached the engine
        print("flood: %d datagrams sent, %d ignored by the client, RSS %d -> %d kB, %d jobs"
              % (sent, seen, before, after, njobs))
        assert after - before < 8 * 1024, "RSS grew from %d to %d kB" % (before, after)
        # summaries, not a line per datagram
        assert err.count("discovery: ignored") <= 2 + (time.monotonic() - t0) / 5, err[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.timeout(30)
def test_log_level_filters_in_the_engine_and_follows_the_logger(caplog):
    """The engine queues nothing below the pp logger's level (tested in C,
    tests/c/test_announce.c); here: lowering the logger's level after the
    Server was made reaches the engine within ~1 s, else its INFO summaries
    would stay filtered."""
    caplog.set_level(logging.INFO, logger="pp")  # the capturing handler's level
    logging.getLogger("pp").setLevel(logging.WARNING)  # the logger's (restored by caplog)
    udp = free_port(socket.SOCK_DGRAM)
    tx = udp_from("127.0.0.2")
    try:
        with client(udp, discovery_window_ms=20000):
            tx.sendto(b"junk", ("127.0.0.1", udp))
            time.sleep(1.0)
            assert "discovery: ignored" not in caplog.text
            logging.getLogger("pp").setLevel(logging.INFO)
            time.sleep(1.5)
            tx.sendto(b"junk", ("127.0.0.1", udp))
            assert wait_until(lambda: "discovery: ignored" in caplog.text, 8), caplog.text
    finally:
        tx.close()


def port_taken(udp):
    """True when some socket holds UDP port udp (a bind without
    SO_REUSEADDR fails)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", udp))
        return False
    except OSError:
        return True
    finally:
        s.close()


@pytest.mark.timeout(30)
def test_client_reads_nothing_after_its_window_until_rescan():
    udp = free_port(socket.SOCK_DGRAM)
    with client(udp, discovery_window_ms=1500) as c:
        assert port_taken(udp)  # in the window: its socket is there
        assert wait_until(lambda: not port_taken(udp), 5), "socket kept after the window"
        c.rescan()
        assert wait_until(lambda: port_taken(udp), 3), "rescan opened no window"
        assert wait_until(lambda: not port_taken(udp), 5)
    with pp.Server(ncpus=1, secret=SECRET) as c:
        with pytest.raises(RuntimeError, match="autodiscovery"):
            c.rescan()


@pytest.mark.timeout(30)
def test_subnet_wildcard_refuses_announcements_from_outside():
    udp = free_port(socket.SOCK_DGRAM)
    inside, outside = bait("127.0.0.1"), bait("127.0.1.5")
    tx_in, tx_out = udp_from("127.0.0.1"), udp_from("127.0.1.5")
    try:
        with client(udp, ppservers=("127.0.0.*",), discovery_window_ms=20000):
            tx_out.sendto(announcement(KEY, "127.0.1.5", outside.getsockname()[1]),
                          ("127.0.0.1", udp))
            assert not accepts(outside, 1.5), "an announcement from outside the subnet was used"
            tx_in.sendto(announcement(KEY, "127.0.0.1", inside.getsockname()[1]),
                         ("127.0.0.1", udp))
            assert accepts(inside, 5)
    finally:
        for s in (inside, outside, tx_in, tx_out):
            s.close()


@pytest.mark.timeout(30)
def test_star_port_connects_only_to_that_port():
    udp = free_port(socket.SOCK_DGRAM)
    want, other = bait(), bait()
    tx = udp_from("127.0.0.1")
    try:
        with client(udp, ppservers=("*:%d" % want.getsockname()[1],), discovery_window_ms=20000):
            tx.sendto(announcement(KEY, "127.0.0.1", other.getsockname()[1]), ("127.0.0.1", udp))
            assert not accepts(other, 1.5), "\"*:port\" connected to another port"
            tx.sendto(announcement(KEY, "127.0.0.1", want.getsockname()[1]), ("127.0.0.1", udp))
            assert accepts(want, 5)
    finally:
        for s in (want, other, tx):
            s.close()


@pytest.mark.timeout(45)
def test_dead_node_expires_and_rescan_finds_it_again(start_ppserver, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pp")
    udp = free_port(socket.SOCK_DGRAM)
    cfg = discovery_config(tmp_path, udp, LOOP_BCAST)
    node = start_ppserver(workers=1, secret=SECRET, args=["-c", cfg])
    with client(udp, ncpus=0, discover_expire_ms=1500, discovery_window_ms=3000) as c:
        assert c.submit(J.square_pid, (4,))()[0] == 16
        assert c.get_active_nodes() == {node.addr: 1}
        node.stop()
        assert wait_until(lambda: "expired" in caplog.text, 15), caplog.text
        assert c.get_active_nodes() == {}
        assert "discovered node %s expired" % node.addr in caplog.text
        node2 = start_ppserver(workers=1, secret=SECRET, port=node.port, args=["-c", cfg])
        c.rescan()
        assert wait_until(lambda: c.get_active_nodes() == {node2.addr: 1}, 10), \
            (c.get_active_nodes(), caplog.text)
        assert c.submit(J.square_pid, (5,))()[0] == 25


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_nothing_discovered_jobs_fail_clearly():
    """ncpus=0 and "*" with no node announcing: once the discovery window
    (5 s) closes the job fails; it used to wait forever (nothing woke the
    engine when no node had ever been found)."""
    udp = free_port(socket.SOCK_DGRAM)
    t0 = time.monotonic()
    with client(udp, ncpus=0) as c:
        with pytest.raises(pp.WorkerError, match="no ppserver announced itself"):
            c.submit(J.square_pid, (1,))()
        assert time.monotonic() - t0 < 12
        # later jobs fail at once
        t1 = time.monotonic()
        with pytest.raises(pp.WorkerError):
            c.submit(J.square_pid, (2,))()
        assert time.monotonic() - t1 < 2


# ------------------------------------------------------------ network namespaces

NS_A, NS_B = "ppc-test-a-%d" % os.getpid(), "ppc-test-b-%d" % os.getpid()
ADDR_A, ADDR_B, BCAST = "10.213.7.1", "10.213.7.2", "10.213.7.255"
ADDR_OUT = "10.99.0.2"  # a second address of B's end, outside A's subnet


@pytest.fixture
def netns_pair():
    pid = os.getpid() % 10000
    veth_a, veth_b = "ppcva%d" % pid, "ppcvb%d" % pid
    extra = [
        ("-n", NS_B, "addr", "add", ADDR_OUT + "/24", "dev", veth_b),
        # A could answer ADDR_OUT: only its subnet rule keeps it silent
        ("-n", NS_A, "route", "add", "10.99.0.0/24", "dev", veth_a),
        ("-n", NS_B, "route", "add", ADDR_A + "/32", "dev", veth_b, "src", ADDR_B),
    ]
    with netnsutil.netns_pair(NS_A, NS_B, veth_a, veth_b, ADDR_A, ADDR_B, brd=BCAST,
                              extra=extra) as pair:
        yield pair


NS_CLIENT = """
import sys, pp, cluster_jobs as J
udp, bcast, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with pp.Server(ncpus=0, ppservers=("*",), secret=secret, _discover_port=udp,
               _broadcast=bcast) as c:
    jobs = [c.submit(J.square_pid, (i,)) for i in range(8)]
    print([j()[0] for j in jobs])
    print(sorted(c.get_active_nodes().items()))
"""

NS_QUERY = """
import os, socket, struct, sys
src, dst, udp = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = b"PPCQ" + struct.pack("<HH", %d, 0) + os.urandom(16)
q += bytes(%d - len(q))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(1.5)
got = 0
for _ in range(3):
    s.sendto(q, (dst, udp))
    try:
        data, _ = s.recvfrom(512)
        got += 1
    except socket.timeout:
        pass
print(got)
""" % (VERSION, ANN_LEN)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_autodiscovery_across_network_namespaces(netns_pair, tmp_path):
    ns_a, ns_b = netns_pair
    udp = 51000  # a fresh namespace: the default port is free there
    node = PPServer(tmp_path, secret=SECRET, workers=2, interface=ADDR_A, netns=ns_a,
                    args=["-a", "-b", BCAST])
    try:
        script = tmp_path / "ns_client.py"
        script.write_text(NS_CLIENT)
        env = child_env()
        env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env["PYTHONPATH"]
        r = subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, str(script), str(udp),
                            BCAST, SECRET], env=env, capture_output=True, text=True, timeout=40)
        assert r.returncode == 0, r.stdout + r.stderr + node.log()
        lines = r.stdout.strip().splitlines()
        assert lines[0] == str([i * i for i in range(8)])
        assert lines[1] == str([("%s:%d" % (ADDR_A, node.port), 2)]), r.stdout
        # and a client with another secret in the same place finds nothing
        r = subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, str(script), str(udp),
                            BCAST, "wrong-secret"], env=env, capture_output=True, text=True,
                           timeout=40)
        assert r.returncode != 0
        assert "WorkerError" in r.stderr, r.stderr
        # queries: answered from A's subnet, never from outside it
        qs = tmp_path / "ns_query.py"
        qs.write_text(NS_QUERY)
        for src, want in ((ADDR_OUT, "0"), (ADDR_B, None)):
            r = subprocess.run(["ip", "netns", "exec", ns_b, sys.executable, str(qs), src,
                                ADDR_A, str(udp)], env=env, capture_output=True, text=True,
                               timeout=20)
            assert r.returncode == 0, r.stderr
            if want is None:
                assert int(r.stdout) >= 1, "no answer to a query from the subnet"
            else:
                assert r.stdout.strip() == want, "answered a query from outside the subnet"
    finally:
        node.stop()
