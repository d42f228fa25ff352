"""Autodiscovery (ARCHITECTURE.md "Autodiscovery"): ``ppserver -a`` and
clients with ppservers=("*",).

  * over loopback: a node announcing on 127.255.255.255 is found and used;
  * announcements are authenticated: one made with the wrong secret, or
    too old, never makes a client connect (a TCP listener in the test
    stands where the announcement points); the same announcement made with
    the right secret does (the control);
  * across two network namespaces joined by a veth pair (10.213.7.0/24,
    inside the namespaces only), when running as root with ``ip``:
    the client finds the node by broadcast and runs jobs there.
"""
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import pp
import cluster_jobs as J
from clusterutil import PPServer, TESTS_DIR, announcement, free_port, start_ppserver  # noqa: F401
from conftest import child_env, _wait_until as wait_until

SECRET = "discovery-secret"
LOOP_BCAST = "127.255.255.255"


def discovery_config(tmp_path, udp_port, broadcast):
    cfg = tmp_path / ("disc-%d.conf" % udp_port)
    cfg.write_text("[network]\nautodiscovery = true\nbroadcast = %s\ndiscovery_port = %d\n"
                   % (broadcast, udp_port))
    return str(cfg)


@pytest.mark.timeout(30)
def test_loopback_autodiscovery(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    node = start_ppserver(workers=2, secret=SECRET,
                          args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    assert "announcing" in node.log()
    with pp.Server(ncpus=0, ppservers=("*",), secret=SECRET, _discover_port=udp,
                   _broadcast=LOOP_BCAST) as c:
        jobs = [c.submit(J.square_pid, (i,)) for i in range(10)]
        assert [j()[0] for j in jobs] == [i * i for i in range(10)]
        assert c.get_active_nodes() == {node.addr: 2}


@pytest.mark.timeout(30)
def test_loopback_node_with_other_secret_not_used(start_ppserver, tmp_path):
    udp = free_port(socket.SOCK_DGRAM)
    start_ppserver(workers=1, secret="other-secret",
                   args=["-c", discovery_config(tmp_path, udp, LOOP_BCAST)])
    with pp.Server(ncpus=1, ppservers=("*",), secret=SECRET, _discover_port=udp,
                   _broadcast=LOOP_BCAST) as c:
        time.sleep(1.0)  # its announcements arrive (query answered, broadcast every 3 s)
        assert c.submit(J.square_pid, (3,))()[0] == 9
        assert c.get_active_nodes() == {"local": 1}


def _accepts(lsock, timeout):
    lsock.settimeout(timeout)
    try:
        s, _ = lsock.accept()
    except socket.timeout:
        return False
    s.close()
    return True


@pytest.mark.timeout(30)
def test_forged_announcement_does_not_lure_client():
    udp = free_port(socket.SOCK_DGRAM)
    bait = socket.socket()
    bait.bind(("127.0.0.1", 0))
    bait.listen(4)
    bait_port = bait.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pp.Server(ncpus=1, ppservers=("*",), secret=SECRET, _discover_port=udp,
                       _broadcast=LOOP_BCAST) as c:
            for bad in (announcement("wrong-secret", bait_port),
                        announcement(SECRET, bait_port, when=time.time() - 3600),
                        announcement(SECRET, bait_port, version=9),
                        announcement(SECRET, bait_port)[:-1],
                        os.urandom(64)):
                for _ in range(3):
                    tx.sendto(bad, ("127.0.0.1", udp))
            assert not _accepts(bait, 1.5), "a forged announcement lured the client"
            assert c.get_active_nodes() == {"local": 1}
            # the control: the right secret makes it connect
            tx.sendto(announcement(SECRET, bait_port), ("127.0.0.1", udp))
            assert _accepts(bait, 5), "a valid announcement was ignored"
    finally:
        tx.close()
        bait.close()


# ------------------------------------------------------------ network namespaces

NS_A, NS_B = "ppc-test-a-%d" % os.getpid(), "ppc-test-b-%d" % os.getpid()
ADDR_A, ADDR_B, BCAST = "10.213.7.1", "10.213.7.2", "10.213.7.255"


def _ip(*args):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)


@pytest.fixture
def netns_pair():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (running as uid %d)" % os.geteuid())
    if not shutil.which("ip"):
        pytest.skip("the ip command (iproute2) is not installed")
    made = []
    try:
        for ns in (NS_A, NS_B):
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                pytest.skip("cannot create a network namespace: %s" % r.stderr.strip())
            made.append(ns)
        veth_a, veth_b = "ppcva%d" % (os.getpid() % 10000), "ppcvb%d" % (os.getpid() % 10000)
        steps = [
            ("link", "add", veth_a, "netns", NS_A, "type", "veth", "peer", "name", veth_b,
             "netns", NS_B),
            ("-n", NS_A, "addr", "add", ADDR_A + "/24", "brd", BCAST, "dev", veth_a),
            ("-n", NS_B, "addr", "add", ADDR_B + "/24", "brd", BCAST, "dev", veth_b),
            ("-n", NS_A, "link", "set", veth_a, "up"),
            ("-n", NS_B, "link", "set", veth_b, "up"),
            ("-n", NS_A, "link", "set", "lo", "up"),
            ("-n", NS_B, "link", "set", "lo", "up"),
        ]
        for st in steps:
            r = _ip(*st)
            if r.returncode != 0:
                pytest.skip("cannot set up veth between namespaces (ip %s): %s"
                            % (" ".join(st), r.stderr.strip()))
        yield NS_A, NS_B
    finally:
        for ns in made:
            _ip("netns", "del", ns)  # deleting a namespace removes its veth end


NS_CLIENT = """
import sys, pp, cluster_jobs as J
udp, bcast, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with pp.Server(ncpus=0, ppservers=("*",), secret=secret, _discover_port=udp,
               _broadcast=bcast) as c:
    jobs = [c.submit(J.square_pid, (i,)) for i in range(8)]
    print([j()[0] for j in jobs])
    print(sorted(c.get_active_nodes().items()))
"""


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
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_nothing_discovered_jobs_fail_clearly():
    """ncpus=0 and "*" with no node announcing: once the discovery window
    (5 s) closes the job fails; it used to wait forever (nothing woke the
    engine when no node had ever been found)."""
    udp = free_port(socket.SOCK_DGRAM)
    t0 = time.monotonic()
    with pp.Server(ncpus=0, ppservers=("*",), secret=SECRET, _discover_port=udp,
                   _broadcast=LOOP_BCAST) as c:
        with pytest.raises(pp.WorkerError, match="no ppserver announced itself"):
            c.submit(J.square_pid, (1,))()
        assert time.monotonic() - t0 < 12
        # later jobs fail at once
        t1 = time.monotonic()
        with pytest.raises(pp.WorkerError):
            c.submit(J.square_pid, (2,))()
        assert time.monotonic() - t1 < 2
