"""ppc on a real Slurm: a private cluster of this machine (munged,
slurmctld, two slurmd as nodes n1 and n2 on 127.0.0.1) started by
tools/slurm-up.sh for this module and stopped afterwards, then real srun,
sbatch, squeue and scancel: pp.run under srun and in a batch script (the
example), SlurmCluster (sbatch node jobs dialing back, scale, pending
jobs, scancel on close and at exit) and python -m pp.slurm.

Skipped, with the reason, when not root or Slurm/munge are missing.
"""
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_base():
    """A port p with p, p+1, p+2 free on loopback."""
    for _ in range(50):
        base = random.randrange(20000, 30000)
        socks = []
        try:
            for p in range(base, base + 3):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no three free ports for slurmctld and two slurmd")


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (running as uid %d)" % os.geteuid())
    missing = [c for c in ("munged", "slurmctld", "slurmd", "srun", "sbatch", "squeue",
                           "scancel") if not shutil.which(c)]
    if missing:
        pytest.skip("Slurm or munge not installed (missing %s): apt-get install slurm-wlm "
                    "munge" % ", ".join(missing))
    d = tempfile.mkdtemp(prefix="ppc-slurm-")
    env = dict(os.environ, SLURM_UP_PORT=str(_free_base()))
    r = subprocess.run(["sh", os.path.join(ROOT, "tools", "slurm-up.sh"), d], env=env,
                       capture_output=True, text=True, timeout=60)
    try:
        if r.returncode != 0:
            pytest.skip("the private Slurm did not start: %s" % (r.stderr.strip()[-500:]))
        yield os.path.join(d, "slurm.conf")
    finally:
        subprocess.run(["sh", os.path.join(ROOT, "tools", "slurm-down.sh"), d],
                       capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def _env(conf, **extra):
    env = child_env()
    for k in list(env):
        if k.startswith(("SLURM_", "OMPI_", "PMI")):
            del env[k]
    env.update({"SLURM_CONF": conf, "PP_RUN_ADDR": "127.0.0.1", "PP_RUN_NCPUS": "1"})
    env.update(extra)
    return env


SCRIPT = r"""
import os, socket, sys, time, pp
def square(x):
    import os
    return x * x, os.environ.get("SLURMD_NODENAME")
s = pp.Server()
t = time.time()
while not [n for n, c in s.get_active_nodes().items() if c and n != "local"]:
    assert time.time() - t < 20, s.get_active_nodes()
    time.sleep(0.01)
res = [j() for j in [s.submit(square, (i,)) for i in range(200)]]
assert [r[0] for r in res] == [i * i for i in range(200)]
print("MARK rank0_on=%s job_nodes=%s" % (os.environ.get("SLURMD_NODENAME"),
                                          sorted(set(r[1] for r in res))))
sys.stdout.flush()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


def _script(tmp_path, text=SCRIPT):
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(text)


@pytest.mark.timeout(60)
def test_srun_two_nodes(slurm, tmp_path):
    _script(tmp_path)
    r = subprocess.run(["srun", "-N", "2", "-n", "2", sys.executable, "-m", "pp.run",
                        "script.py"], cwd=str(tmp_path), env=_env(slurm), capture_output=True,
                       text=True, timeout=50)
    assert r.returncode == 0, r.stdout + r.stderr
    # rank 0 on one node, and jobs ran on both Slurm nodes; one output
    assert r.stdout.count("MARK") == 1, r.stdout
    assert "job_nodes=['n1', 'n2']" in r.stdout, r.stdout
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(".ppc-run")]


@pytest.mark.timeout(60)
def test_srun_every_task_exits_with_the_scripts_status(slurm, tmp_path):
    _script(tmp_path)
    r = subprocess.run(["srun", "-N", "2", "-n", "2", sys.executable, "-m", "pp.run",
                        "script.py", "5"], cwd=str(tmp_path), env=_env(slurm),
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "task 0: Exited with exit code 5" in r.stderr, r.stderr
    assert "task 1: Exited with exit code 5" in r.stderr, r.stderr


@pytest.mark.timeout(60)
def test_sbatch_example_job_script(slurm, tmp_path):
    """examples/slurm_job.sh as a user submits it (sbatch --wait)."""
    out = os.path.join(str(tmp_path), "job.out")
    env = _env(slurm, PYTHON=sys.executable)
    r = subprocess.run(["sbatch", "--wait", "-N", "2", "-n", "2", "-o", out,
                        os.path.join(ROOT, "examples", "slurm_job.sh")],
                       cwd=os.path.join(ROOT, "examples"), env=env, capture_output=True,
                       text=True, timeout=50)
    with open(out) as f:
        text = f.read()
    assert r.returncode == 0, r.stderr + text
    assert "2 ranks" in text and "nodes: 1" in text, text


CLUSTER = r"""
import sys, time, pp
from pp.slurm import SlurmCluster
def square(x):
    import os
    return x * x, os.environ.get("SLURM_JOB_ID")
with SlurmCluster(nodes=2, cpus_per_node=1, host="127.0.0.1", pending_timeout=30) as c:
    c.wait()
    s = c.server()
    t = time.time()
    while len([n for n, k in s.get_active_nodes().items() if k]) < 2:
        assert time.time() - t < 20, s.get_active_nodes()
        time.sleep(0.01)
    res = [j() for j in [s.submit(square, (i,)) for i in range(100)]]
    assert [r[0] for r in res] == [i * i for i in range(100)]
    print("JOBS", sorted(c.jobs) == sorted(set(r[1] for r in res)))
    c.scale(1)
    print("SCALED", list(c.nodes.values()))
    print("IDS", " ".join(c.jobs))
    s.destroy()
"""


def _squeue(conf, ids):
    r = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=_env(conf), capture_output=True,
                       text=True, timeout=30)
    return {l.split()[0]: l.split()[1] for l in r.stdout.splitlines()
            if l.split() and l.split()[0] in ids}


def _gone(conf, ids, timeout=15):
    t = time.time()
    while time.time() - t < timeout:
        left = {j: st for j, st in _squeue(conf, ids).items() if st != "COMPLETING"}
        if not left:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(60)
def test_slurm_cluster_nodes_scale_and_close(slurm, tmp_path):
    _script(tmp_path, CLUSTER)
    r = subprocess.run([sys.executable, "script.py"], cwd=str(tmp_path), env=_env(slurm),
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "JOBS True" in r.stdout, r.stdout  # jobs ran in both node jobs
    assert "SCALED ['RUNNING']" in r.stdout, r.stdout
    ids = r.stdout.split("IDS", 1)[1].split()
    assert ids and _gone(slurm, ids), "node jobs left after close: %s" % _squeue(slurm, ids)


PENDING = r"""
import sys
from pp.slurm import SlurmCluster, SlurmPendingError
c = SlurmCluster(nodes=1, host="127.0.0.1", extra_sbatch=["--begin=now+1hour"])
print("IDS", " ".join(c.jobs))
sys.stdout.flush()
try:
    c.wait(timeout=1.5)
except SlurmPendingError as e:
    print("ERROR", e)
if sys.argv[1] == "close":
    c.close()
# else: left open, the interpreter's exit cancels it
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["close", "exit"])
def test_slurm_cluster_pending_jobs_error_and_cancel(slurm, tmp_path, how):
    _script(tmp_path, PENDING)
    r = subprocess.run([sys.executable, "script.py", how], cwd=str(tmp_path),
                       env=_env(slurm), capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR 0 of 1 node jobs running after 2 s" in r.stdout, r.stdout
    assert "PENDING (BeginTime)" in r.stdout, r.stdout
    ids = r.stdout.split("IDS", 1)[1].split("\n")[0].split()
    assert ids and _gone(slurm, ids), "pending job not cancelled: %s" % _squeue(slurm, ids)


@pytest.mark.timeout(60)
def test_python_m_pp_slurm_runs_a_script_on_node_jobs(slurm, tmp_path):
    _script(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pp.slurm", "--nodes", "2", "--cpus-per-node",
                        "1", "--host", "127.0.0.1", "--pending-timeout", "30", "script.py"],
                       cwd=str(tmp_path), env=_env(slurm), capture_output=True, text=True,
                       timeout=50)
    assert r.returncode == 0, r.stdout + r.stderr
    # no local workers on the login node: every job ran in a node job
    assert "rank0_on=None job_nodes=['n1']" in r.stdout or \
        "rank0_on=None job_nodes=['n1', 'n2']" in r.stdout, r.stdout


@pytest.mark.timeout(30)
def test_dialing_node_exits_once_its_client_is_unreachable(tmp_path):
    """ppserver --connect -t: a node job whose client died (no scancel)
    ends by itself; while the client's port accepts, it waits."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    env = child_env()
    env["PP_SECRET"] = "x" * 32
    p = subprocess.Popen([sys.executable, "-m", "pp.ppserver", "-w", "1", "-t", "1",
                          "--connect", "127.0.0.1:%d" % port], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn, _ = ls.accept()  # it dialed; nothing answers it yet
        time.sleep(2.5)
        assert p.poll() is None, "left while its client was reachable"
        conn.close()
        ls.close()  # the client is gone: refused from now on
        t = time.time()
        out, _ = p.communicate(timeout=15)
        assert p.returncode == 0 and "no client for" in out, out
        assert time.time() - t < 6
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        ls.close()
