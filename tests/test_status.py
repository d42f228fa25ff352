"""The status endpoints of a Server and a ppserver (status_port): /status
JSON and /metrics checked against get_stats() while jobs run, errors with
their remote traceback, the page served while the interpreter holds the
GIL, the bearer-token rule off loopback, ppserver --status-port, its config
key, ppserver --status and python -m pp.status. Real processes and sockets
on loopback only."""
import os
import socket
import subprocess
import sys
import time

import pytest

import conftest
import pp
from clusterutil import PPServer, free_port
from statusutil import get, port_of, status

pytestmark = pytest.mark.timeout(60)


def pause(ms):
    import time
    time.sleep(ms / 1000.0)
    return ms


def fail_with(tag):
    raise ValueError("status-test-%s" % tag)


def local(st):
    return [n for n in st["nodes"] if n["name"] == "local"][0]


def test_json_follows_get_stats_while_jobs_run(fresh_server):
    s = fresh_server(2, status_port=0)
    assert s.status_url.startswith("http://127.0.0.1:")
    jobs = [s.submit(pause, (2,)) for _ in range(400)]
    seen = []
    while s._active_tasks() > 40:
        before = s.get_stats()["local"].njobs
        st = status(s.status_url)
        after = s.get_stats()["local"].njobs
        assert before <= local(st)["jobs"] <= after
        assert before <= st["jobs_done"] <= after
        assert 0 <= st["queue"] <= st["pending"] <= 400
        assert st["running"] and st["role"] == "client"
        busy = [w for w in st["workers"] if w["state"] == "busy"]
        for w in busy:
            assert w["job_age_seconds"] is not None and 0 <= w["job_age_seconds"] < 5
        seen.append(local(st)["jobs"])
        time.sleep(0.05)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > seen[0], seen
    s.wait()
    assert [j() for j in jobs] == [2] * 400
    st = status(s.status_url)
    stats = s.get_stats()["local"]
    assert local(st)["jobs"] == st["jobs_done"] == stats.njobs == 400
    assert local(st)["job_seconds"] == pytest.approx(stats.time, abs=1e-5)
    assert local(st)["cores"] == stats.ncpus == 2 and local(st)["state"] == "up"
    assert st["pending"] == 0 and st["queue"] == 0
    assert sum(w["jobs"] for w in st["workers"]) == 400
    assert sorted(w["pid"] for w in st["workers"]) == sorted(s._worker_pids())
    for w in st["workers"]:
        assert w["state"] == "idle" and w["rss_bytes"] > 1 << 20
    h = st["histogram"]
    assert h["count"] == sum(h["counts"]) == 400
    # 2 ms sleeps: all in the (1 ms, 10 ms] bucket or the next
    assert h["counts"][3] + h["counts"][4] == 400, h
    assert h["sum_seconds"] == pytest.approx(stats.time, abs=1e-5)
    assert sum(st["jobs_per_second"]) == 400
    assert st["jobs_per_second_1m"] > 0


def test_errors_carry_the_remote_traceback_in_a_bounded_ring(fresh_server):
    s = fresh_server(1, status_port=0)
    jobs = [s.submit(fail_with, (i,)) for i in range(40)]
    s.wait()
    for j in jobs:
        with pytest.raises(ValueError):
            j()
    st = status(s.status_url)
    assert st["errors_total"] == 40
    assert len(st["errors"]) == 16  # the ring keeps the newest
    newest = st["errors"][0]
    assert newest["type"] == "ValueError" and newest["message"] == "status-test-39"
    assert newest["node"] == "local"
    assert "Traceback (most recent call last)" in newest["traceback"]
    assert "in fail_with" in newest["traceback"] and "status-test-39" in newest["traceback"]
    assert [e["message"] for e in st["errors"]] == ["status-test-%d" % i
                                                     for i in range(39, 23, -1)]
    assert abs(newest["time"] - time.time()) < 30
    # a job that raised still counts as done, as in get_stats
    assert st["jobs_done"] == s.get_stats()["local"].njobs == 40


def test_metrics_parse_with_prometheus_client(fresh_server):
    parser = pytest.importorskip("prometheus_client.parser")
    s = fresh_server(2, status_port=0)
    for j in [s.submit(pause, (1,)) for _ in range(50)] + [s.submit(fail_with, ("m",))]:
        try:
            j()
        except ValueError:
            pass
    code, body, headers = get(s.status_url, "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    for name, f in fams.items():
        assert name.startswith("ppc_"), name
        for smp in f.samples:
            assert set(smp.labels) <= {"node", "worker", "le"}, smp  # never a job id
            if f.type == "counter":
                assert smp.name.endswith("_total") or smp.name.endswith("_created"), smp
    stats = s.get_stats()["local"]

    def value(fam, sample_name, **labels):
        hits = [x.value for x in fams[fam].samples
                if x.name == sample_name and all(x.labels.get(k) == v for k, v in labels.items())]
        assert len(hits) == 1, (fam, sample_name, labels, fams[fam].samples)
        return hits[0]

    assert fams["ppc_jobs"].type == "counter"
    assert value("ppc_jobs", "ppc_jobs_total", node="local") == stats.njobs == 51
    assert value("ppc_job_time_seconds", "ppc_job_time_seconds_total",
                 node="local") == pytest.approx(stats.time, abs=1e-6)
    assert value("ppc_job_errors", "ppc_job_errors_total") == 1
    assert value("ppc_node_cores", "ppc_node_cores", node="local") == 2
    assert value("ppc_node_up", "ppc_node_up", node="local") == 1
    assert fams["ppc_job_duration_seconds"].type == "histogram"
    assert value("ppc_job_duration_seconds", "ppc_job_duration_seconds_count") == 51
    assert value("ppc_job_duration_seconds", "ppc_job_duration_seconds_bucket", le="+Inf") == 51
    pids = {str(p) for p in s._worker_pids()}
    per_worker = {x.labels["worker"]: x.value for x in fams["ppc_worker_jobs"].samples
                  if x.name == "ppc_worker_jobs_total"}
    assert set(per_worker) == pids and sum(per_worker.values()) == 51
    rss = [x for x in fams["ppc_worker_resident_memory_bytes"].samples]
    assert {x.labels["worker"] for x in rss} == pids and all(x.value > 1 << 20 for x in rss)
    assert value("ppc_pending_jobs", "ppc_pending_jobs") == 0


def test_page_and_health_served_while_the_interpreter_holds_the_gil(tmp_path):
    """The client spins in pure Python (GIL held) after submitting; its
    engine thread still runs the jobs and answers the page."""
    script = tmp_path / "busy.py"
    script.write_text(
        "import sys, time, pp\n"
        "def pause(ms):\n"
        "    import time\n"
        "    time.sleep(ms / 1000.0)\n"
        "    return ms\n"
        "s = pp.Server(2, status_port=0)\n"
        "print(s.status_url, flush=True)\n"
        "jobs = [s.submit(pause, (10,)) for _ in range(200)]\n"
        "t = time.monotonic()\n"
        "while time.monotonic() - t < 25:\n"
        "    pass\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                         env=conftest.child_env(), text=True)
    try:
        url = p.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            code, body, _ = get(url, "health", timeout=2)
            assert code == 200 and body == b"ok\n"
            st = status(url)
            assert time.monotonic() - t0 < 1.5
            seen.append(st["jobs_done"])
            if st["jobs_done"] == 200:
                break
            time.sleep(0.1)
        assert seen[-1] == 200, seen
        assert len(set(seen)) >= 3, seen  # it moved while we watched
        code, body, _ = get(url, "")
        assert code == 200 and b"<title>ppc status</title>" in body
    finally:
        p.kill()
        p.wait()


def test_health_ends_with_the_engine_and_only_get_is_served(fresh_server):
    s = fresh_server(1, status_port=0)
    url = s.status_url
    assert get(url, "health")[0] == 200
    assert get(url, "nothing-here")[0] == 404
    code, body, headers = get(url, "")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, ctype in (("status.js", "text/javascript"), ("status.css", "text/css")):
        code, body, headers = get(url, path)
        assert code == 200 and headers["Content-Type"].startswith(ctype) and body
    import urllib.request
    import urllib.error
    req = urllib.request.Request(url + "status", data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=5)
    assert ei.value.code == 405 and ei.value.headers["Allow"] == "GET, HEAD"
    port = port_of(url)
    s.destroy()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_taken_port_is_a_clear_error(fresh_server):
    s = fresh_server(1, status_port=0)
    with pytest.raises(OSError, match="status page"):
        fresh_server(1, status_port=port_of(s.status_url))
    with pytest.raises(ValueError):
        fresh_server(1, status_port=70000)


def test_another_address_requires_the_secret_as_bearer_token(fresh_server, monkeypatch):
    monkeypatch.delenv("PP_SECRET", raising=False)
    monkeypatch.setattr(pp, "_user_secret", lambda: None)
    with pytest.raises(OSError, match="needs the cluster secret"):
        fresh_server(1, status_port=0, status_host="127.0.0.2")
    s = fresh_server(1, status_port=0, status_host="127.0.0.2", secret="tok-3141")
    url = s.status_url
    assert url.startswith("http://127.0.0.2:")
    for path in ("status", "metrics", "health"):
        code, body, headers = get(url, path)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert b"jobs" not in body
        assert get(url, path, token="tok-314")[0] == 401   # a prefix
        assert get(url, path, token="tok-31415")[0] == 401  # longer
        assert get(url, path, token="TOK-3141")[0] == 401
        assert get(url, path, token="tok-3141")[0] == 200
    # the page's own files hold no data: served without the token
    assert get(url, "")[0] == 200 and get(url, "status.js")[0] == 200
    # and loopback's 127.0.0.1 needs none
    s2 = fresh_server(1, status_port=0, secret="tok-3141")
    assert get(s2.status_url, "status")[0] == 200


def test_ppserver_status_port_config_key_and_terminal_views(tmp_path, fresh_server):
    secret = "status-cluster"
    sport = free_port()
    cfg = tmp_path / "ppserver.cfg"
    cfg.write_text("[network]\nstatus_port = %d\n" % sport)
    with PPServer(tmp_path, secret=secret, workers=1, args=["-c", str(cfg)]) as node:
        nurl = "http://127.0.0.1:%d/" % sport
        assert get(nurl, "health")[0] == 200
        c = fresh_server(0, ppservers=(node.addr,), secret=secret, status_port=0)
        import cluster_jobs
        jobs = [c.submit(cluster_jobs.square_pid, (i,)) for i in range(20)]
        assert [j()[0] for j in jobs] == [i * i for i in range(20)]
        cst = status(c.status_url)
        remote = [n for n in cst["nodes"] if n["name"] != "local"]
        assert len(remote) == 1
        r = remote[0]
        assert r["state"] == "up" and r["address"] == node.addr and r["cores"] == 1
        assert r["jobs"] == c.get_stats()[r["name"]].njobs == 20
        assert r["link"]["auth"] == "psk-scrypt" and r["link"]["tls"] is True
        assert local(cst)["state"] == "down" and local(cst)["cores"] == 0
        nst = status(nurl)
        assert nst["role"] == "ppserver" and nst["nclients"] == 1
        assert [x["state"] for x in nst["clients"]] == ["ready"]
        assert [x["link"]["tls"] for x in nst["clients"]] == [True]
        assert local(nst)["jobs"] == 20 and len(nst["workers"]) == 1
        # the terminal views: ppserver --status and python -m pp.status
        env = conftest.child_env()
        out = subprocess.run([sys.executable, "-m", "pp.ppserver", "--status", "--status-port",
                              str(sport)], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "ppc ppserver status" in out.stdout and "clients:" in out.stdout
        assert "ready" in out.stdout and "local workers:" in out.stdout
        out = subprocess.run([sys.executable, "-m", "pp.status", c.status_url],
                             capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        row = [ln for ln in out.stdout.splitlines() if node.addr in ln and " up " in ln]
        assert row and row[0].split()[5] == "20", out.stdout
        assert "jobs done 20" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pp.status", nurl], capture_output=True,
                         text=True, env=conftest.child_env(), timeout=30)
    assert out.returncode == 1 and "cannot read" in out.stderr
