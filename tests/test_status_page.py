"""The live status page in a real browser: headless Chromium (Debian's
chromium) loads it from a running Server with a local pool and a ppserver
node, runs its script, and the test checks the DOM shows the nodes, job
counts and workers that get_stats() and the Server report; it also takes a
screenshot (docs/status.png is made from it: PPC_STATUS_SCREENSHOT=path
copies it there)."""
import os
import re
import shutil
import subprocess
import time

import pytest

import cluster_jobs
from clusterutil import PPServer
from statusutil import status

pytestmark = pytest.mark.timeout(90)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *args):
    # a profile of its own, and no sandbox: tests may run as root
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-extensions", "--user-data-dir=%s" % (tmp_path / "profile"),
           "--window-size=1280,1050", "--virtual-time-budget=4000"] + list(args)
    return subprocess.run(cmd, capture_output=True, timeout=60)


def busy_work(x, ms):
    import time
    time.sleep(ms / 1000.0)
    if x % 97 == 13:
        raise ValueError("input %d is out of range" % x)
    return x


@pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (make sysdeps-test installs it)")
def test_page_in_headless_chromium_shows_nodes_and_job_counts(tmp_path, fresh_server):
    secret = "page-secret"
    with PPServer(tmp_path, secret=secret, workers=1) as node:
        s = fresh_server(2, ppservers=(node.addr,), secret=secret, status_port=0)
        # a few seconds of work, so the jobs/s chart has a shape
        for rnd in range(6):
            jobs = [s.submit(busy_work, (i, (i * 7) % 9)) for i in range(40 + 30 * (rnd % 4))]
            jobs += [s.submit(cluster_jobs.sleep_then, (i, 0.004)) for i in range(30)]
            s.wait()
            time.sleep(0.8)
        # then long jobs keep every local worker busy while the page loads
        [s.submit(cluster_jobs.sleep_then, (i, 30)) for i in range(2)]
        time.sleep(0.3)
        stats = s.get_stats()
        st = status(s.status_url)
        total = sum(v.njobs for v in stats.values())
        assert st["jobs_done"] == total

        shot = tmp_path / "status.png"
        r = chromium(tmp_path, "--screenshot=%s" % shot, s.status_url)
        assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 20000, r.stderr[-2000:]
        r = chromium(tmp_path, "--dump-dom", s.status_url)
        assert r.returncode == 0, r.stderr[-2000:]
        dom = r.stdout.decode()

        # the connection state and the tiles
        assert 'id="conn" class="conn live"' in dom, dom[:3000]
        tile = lambda tid: re.search(r'id="%s">([^<]*)<' % tid, dom).group(1)
        assert tile("t-done") == "{:,}".format(total)
        assert tile("t-nodes") == "2 / 2"
        assert tile("t-cores") == "3"
        assert tile("t-errors") == str(st["errors_total"]) and st["errors_total"] >= 4
        # a row per node, with its job count as get_stats() says
        rows = dict(re.findall(r'<tr data-node="([^"]+)" data-jobs="(\d+)">', dom))
        assert set(rows) == set(stats) == {"local", node.addr}
        for name, v in stats.items():
            assert int(rows[name]) == v.njobs > 0, (name, rows, stats)
            row = re.search(r'<tr data-node="%s".*?</tr>' % re.escape(name), dom).group(0)
            assert '<td class="n" data-f="jobs">{:,}</td>'.format(v.njobs) in row
            assert 'class="pill up"' in row
        # a row per local worker, busy with the long jobs
        pids = re.findall(r'<tr data-pid="(\d+)">(.*?)</tr>', dom)
        assert sorted(int(p) for p, _ in pids) == sorted(s._worker_pids())
        assert all('class="pill busy"' in row for _, row in pids)
        # the newest error with its remote traceback, and both charts drawn
        assert "input " in dom and "is out of range" in dom and "in busy_work" in dom
        assert '<canvas id="rate"' in dom and '<canvas id="hist"' in dom

        dest = os.environ.get("PPC_STATUS_SCREENSHOT")
        if dest:
            shutil.copyfile(str(shot), dest)
