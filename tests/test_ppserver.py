"""ppserver's command line, config file, pid file, signals, idle exit,
restart and worker count, through real ppserver processes on loopback.

  * -h prints the usage; no secret: refuses to start and says how to give
    one (-s, config file, PP_SECRET, pp_secret in ~/.pythonrc.py);
    pp_secret in ~/.pythonrc.py is honoured;
  * -c config file: [general] secret, workers, debug, restart, pid_file,
    proto; [network] interface, port, socket_timeout, timeout;
  * -P pid file: written, removed on SIGTERM, workers reaped;
  * SIGUSR1 prints the statistics table; -t exits when idle (not while a
    client is connected); -r gives each job a fresh worker; -w is the
    worker count a client sees in get_active_nodes().
"""
import os
import signal
import time

import pytest

import pp
import cluster_jobs as J
from clusterutil import (PPServer, Wire, alive, free_port, run_ppserver,  # noqa: F401
                         start_ppserver)
from conftest import _wait_until as wait_until


def client(node, secret="cluster-secret-for-tests", **kw):
    return pp.Server(ncpus=0, ppservers=(node.addr,), secret=secret, **kw)


def test_help_prints_usage():
    p = run_ppserver(["-h"])
    assert p.returncode == 0, p.stderr
    assert "Usage: ppserver" in p.stdout
    for opt in ("-a", "-r", "-c path", "-p port", "-w nworkers", "-s secret", "-t seconds",
                "-P pid_file", "-k seconds"):
        assert opt in p.stdout, opt


def test_bad_option_prints_usage_and_fails():
    p = run_ppserver(["-Z"])
    assert p.returncode == 2
    assert "Usage: ppserver" in p.stderr


def test_refuses_to_start_without_secret(tmp_path):
    p = run_ppserver(["-i", "127.0.0.1", "-p", str(free_port())], env={"HOME": str(tmp_path)})
    assert p.returncode != 0
    msg = p.stderr
    assert "secret" in msg
    for way in ("--new-secret", "--secret-file", "PP_SECRET", "config"):
        assert way in msg, (way, msg)


@pytest.mark.timeout(30)
def test_secret_from_pythonrc(tmp_path, start_ppserver):
    (tmp_path / ".pythonrc.py").write_text("pp_secret = 'from-rc'\n")
    node = start_ppserver(secret=None, env={"HOME": str(tmp_path)})
    with client(node, secret="from-rc") as c:
        assert c.submit(J.square_pid, (7,))()[0] == 49


@pytest.mark.timeout(40)
def test_config_file(tmp_path):
    port = free_port()
    pidfile = tmp_path / "pp.pid"
    cfg = tmp_path / "ppserver.conf"
    cfg.write_text(
        "[general]\nsecret = from-config\nworkers = 3\ndebug = true\nproto = 4\n"
        "restart = true\npid_file = %s\n\n"
        "[network]\ninterface = 127.0.0.1\nport = %d\ntimeout = 30\nsocket_timeout = 7\n"
        % (pidfile, port))
    node = PPServer(tmp_path, secret=None, workers=None, interface=None, port=port,
                    args=["-c", str(cfg)])
    try:
        assert pidfile.read_text().strip() == str(node.pid)
        # socket_timeout is the liveness interval the node announces
        w = Wire(port)
        ncpus, liveness_ms = w.handshake("from-config")
        w.close()
        assert (ncpus, liveness_ms) == (3, 7000)
        with client(node, secret="from-config") as c:
            assert wait_until(lambda: c.get_active_nodes().get(node.addr) == 3, 10)
            # restart = true: a fresh worker for every job
            pids = [c.submit(J.square_pid, (i,))()[1] for i in range(4)]
            assert len(set(pids)) == 4, pids
        assert "DEBUG" in node.log()  # debug = true
    finally:
        node.stop()
    assert not pidfile.exists()


@pytest.mark.timeout(30)
def test_pid_file_and_sigterm_reaps_workers(tmp_path, start_ppserver):
    pidfile = tmp_path / "node.pid"
    node = start_ppserver(workers=3, args=["-P", str(pidfile)])
    assert pidfile.read_text().strip() == str(node.pid)
    assert wait_until(lambda: len(node.workers()) == 3, 10), node.workers()
    workers = node.workers()
    node.signal(signal.SIGTERM)
    assert node.proc.wait(10) == 0, node.log()
    assert not pidfile.exists()
    assert wait_until(lambda: not any(alive(p) for p in workers), 5), \
        [p for p in workers if alive(p)]
    assert "ppserver stopped" in node.log()


@pytest.mark.timeout(30)
def test_sigusr1_prints_stats(start_ppserver):
    node = start_ppserver(workers=2)
    with client(node) as c:
        assert [c.submit(J.square_pid, (i,))()[0] for i in range(5)] == [0, 1, 4, 9, 16]
        node.signal(signal.SIGUSR1)
        assert wait_until(lambda: "Job execution statistics" in node.log(), 5), node.log()
    log = node.log()
    assert "job count | % of all jobs" in log
    row = [line for line in log.splitlines() if line.strip().endswith("| local")]
    assert row and row[0].split("|")[0].strip() == "5", log
    assert node.proc.poll() is None  # still serving


@pytest.mark.timeout(30)
def test_idle_timeout_exits_but_not_while_a_client_is_connected(start_ppserver):
    node = start_ppserver(args=["-t", "1"])
    c = client(node)
    try:
        assert c.submit(J.square_pid, (3,))()[0] == 9
        time.sleep(2.0)
        assert node.proc.poll() is None, "exited while a client was connected"
    finally:
        c.destroy()
    t0 = time.monotonic()
    assert node.proc.wait(10) == 0
    assert time.monotonic() - t0 < 5
    assert "no client" in node.log()


@pytest.mark.timeout(30)
def test_restart_gives_each_job_a_fresh_worker(start_ppserver):
    node = start_ppserver(workers=1, args=["-r"])
    with client(node) as c:
        pids = [c.submit(J.square_pid, (i,))()[1] for i in range(4)]
    assert len(set(pids)) == 4, pids


@pytest.mark.timeout(30)
def test_worker_count_seen_by_client(start_ppserver):
    node = start_ppserver(workers=3)
    with client(node) as c:
        assert wait_until(lambda: c.get_active_nodes().get(node.addr) == 3, 10), \
            c.get_active_nodes()
        jobs = [c.submit(J.sleep_then, (i, 0.3)) for i in range(6)]
        pids = {j()[1] for j in jobs}
    assert len(pids) == 3


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_sigterm_while_jobs_run_stops_promptly_and_reaps(start_ppserver):
    node = start_ppserver(workers=2)
    c = client(node)
    try:
        jobs = [c.submit(J.sleep_then, (i, 30)) for i in range(4)]
        assert wait_until(lambda: node.addr in c.get_active_nodes(), 10)
        time.sleep(0.5)
        workers = node.workers()
        assert len(workers) == 2
        t0 = time.monotonic()
        node.signal(signal.SIGTERM)
        assert node.proc.wait(10) == 0, node.log()
        assert time.monotonic() - t0 < 5
        assert wait_until(lambda: not any(alive(p) for p in workers), 5)
        # the client sees the node lost; with nowhere else to go the jobs fail
        for j in jobs:
            with pytest.raises(pp.WorkerError):
                j()
    finally:
        c.destroy()
