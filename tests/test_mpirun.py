"""pp.run under a launcher: real mpirun (Open MPI), and ranks started by
hand with a launcher's environment (PMI_RANK/PMI_SIZE/PP_RUN_JOBID), as
separate processes, also in separate network namespaces joined by veth.

What is checked: rank 0 runs the script with every other rank as a node
(connect-back: nodes dial rank 0); only rank 0's output shows; the exit
status reaches every rank; a rank that dies is a lost node whose jobs run
again; ranks of two jobs never authenticate each other (the job id is in
the secret); the rendezvous file is private and removed.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import pp
import netnsutil
from conftest import child_env
from pp.run import job_secret

MPIRUN = shutil.which("mpirun")
need_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun (Debian's openmpi-bin) is "
                                 "not installed")

SCRIPT = r"""
import os, sys, time, pp
def where(x):
    import os
    return x * x, os.getppid()
want = int(sys.argv[1])
s = pp.Server()
t = time.time()
while sum(1 for n, c in s.get_active_nodes().items() if c and n != "local") < want:
    assert time.time() - t < 20, s.get_active_nodes()
    time.sleep(0.01)
jobs = [s.submit(where, (i,)) for i in range(300)]
res = [j() for j in jobs]
assert [r[0] for r in res] == [i * i for i in range(300)]
remote = {n: st.njobs for n, st in s.get_stats().items() if n != "local"}
print("MARK nodes=%d ran_on=%d argv=%s" % (len(remote), sum(1 for v in remote.values() if v),
                                           sys.argv[2:]))
sys.stdout.flush()
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def _mpirun(tmp_path, n, args, env_extra=None, timeout=60):
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(SCRIPT)
    env = child_env()
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "PP_RUN_ADDR": "127.0.0.1", "PP_RUN_NCPUS": "1"})
    env.update(env_extra or {})
    cmd = [MPIRUN, "--oversubscribe", "--mca", "btl_tcp_if_include", "lo", "-n", str(n),
           "-x", "PYTHONPATH", "-x", "PP_RUN_ADDR", "-x", "PP_RUN_NCPUS", "-x", "EXIT_WITH",
           sys.executable, "-m", "pp.run", "script.py"] + list(args)
    env.setdefault("EXIT_WITH", "0")
    return subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=timeout)


@need_mpirun
@pytest.mark.timeout(60)
def test_mpirun_ranks_are_nodes_of_rank_0(tmp_path):
    r = _mpirun(tmp_path, 3, ["2", "a", "b c"])
    assert r.returncode == 0, r.stdout + r.stderr
    # only rank 0 runs the script and prints; both other ranks ran jobs
    assert r.stdout.count("MARK") == 1, r.stdout
    assert "MARK nodes=2 ran_on=2 argv=['a', 'b c']" in r.stdout, r.stdout
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith(".ppc-run")]


@need_mpirun
@pytest.mark.timeout(60)
def test_mpirun_exit_status_and_traceback(tmp_path):
    r = _mpirun(tmp_path, 2, ["1"], {"EXIT_WITH": "7"})
    assert r.returncode == 7, r.stdout + r.stderr
    # both ranks exit with the script's status
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write("raise ValueError('boom from the script')\n")
    env = child_env()
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "PP_RUN_ADDR": "127.0.0.1"})
    r = subprocess.run([MPIRUN, "--oversubscribe", "-n", "2", "-x", "PYTHONPATH", "-x",
                        "PP_RUN_ADDR", sys.executable, "-m", "pp.run", "script.py"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ValueError: boom from the script" in r.stderr
    assert 'File "script.py", line 1' in r.stderr and "runpy" not in r.stderr, r.stderr


def test_pp_run_without_launcher_runs_locally(tmp_path):
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(SCRIPT)
    env = child_env()
    for k in list(env):
        if k.startswith(("OMPI_", "PMI", "SLURM_")):
            del env[k]
    r = subprocess.run([sys.executable, "-m", "pp.run", "script.py", "0", "x"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "MARK nodes=0 ran_on=0 argv=['x']" in r.stdout


# ------------------------------------------------- ranks started by hand (PMI)

def _rank(tmp_path, rank, size, jobid, args=(), netns=None, extra=None):
    env = child_env()
    for k in list(env):
        if k.startswith(("OMPI_", "PMI", "SLURM_")):
            del env[k]
    env.update({"PMI_RANK": str(rank), "PMI_SIZE": str(size), "PP_RUN_JOBID": jobid,
                "PP_RUN_NCPUS": "1"})
    if not netns:
        env["PP_RUN_ADDR"] = "127.0.0.1"  # loopback only, outside namespaces of our own
    env.update(extra or {})
    cmd = [sys.executable, "-m", "pp.run", "script.py"] + list(args)
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    return subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_file(path, timeout=20):
    t = time.time()
    while not os.path.exists(path):
        assert time.time() - t < timeout, "no %s" % path
        time.sleep(0.02)


DEATH_SCRIPT = r"""
import os, sys, time, pp
def slow(x):
    import os, time
    time.sleep(0.4)
    return x, os.getppid()
s = pp.Server()
t = time.time()
while sum(1 for n, c in s.get_active_nodes().items() if c and n != "local") < 2:
    assert time.time() - t < 20
    time.sleep(0.01)
jobs = [s.submit(slow, (i,)) for i in range(12)]
open("submitted", "w").close()
res = [j() for j in jobs]
assert [r[0] for r in res] == list(range(12)), res
victim = int(open("victim").read())
print("DONE after_death=%d" % sum(1 for r in res if r[1] == victim))
"""


@pytest.mark.timeout(60)
def test_rank_that_dies_is_a_lost_node_and_its_jobs_rerun(tmp_path):
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(DEATH_SCRIPT)
    loud = {"PP_RUN_VERBOSE": "1"}
    procs = [_rank(tmp_path, 0, 3, "death-1")]
    try:
        procs += [_rank(tmp_path, i, 3, "death-1", extra=loud) for i in (1, 2)]
        _wait_file(os.path.join(str(tmp_path), "submitted"))
        time.sleep(0.15)
        with open(os.path.join(str(tmp_path), "victim"), "w") as f:
            f.write(str(procs[2].pid))
        procs[2].send_signal(signal.SIGKILL)
        out, err = procs[0].communicate(timeout=40)
        assert procs[0].returncode == 0, out + err
        assert "DONE" in out, out + err
        lost = re.search(r"lost: .*; (\d+) job\(s\) rescheduled", err)
        assert lost and int(lost.group(1)) >= 1, err  # its jobs ran again elsewhere
        assert procs[1].wait(timeout=20) == 0  # told the job's status
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


SECRET_SCRIPT = r"""
import sys, time, pp
s = pp.Server()
t = time.time()
while not [n for n, c in s.get_active_nodes().items() if c and n != "local"]:
    assert time.time() - t < 20
    time.sleep(0.01)
print("NODES", sorted(n for n, c in s.get_active_nodes().items() if c and n != "local"))
print("RESULT", s.submit(pow, (3, 4))())
"""


@pytest.mark.timeout(60)
def test_two_jobs_secrets_do_not_mix(tmp_path):
    """A rank of job B given job A's rendezvous (same file content, other
    job id) is refused: the job id is part of the secret."""
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(SECRET_SCRIPT)
    a0 = _rank(tmp_path, 0, 2, "job-A", extra={"PP_RUN_TIMEOUT": "2"})
    procs = [a0]
    try:
        path_a = os.path.join(str(tmp_path), ".ppc-run-job-A")
        _wait_file(path_a)
        st = os.stat(path_a)
        assert st.st_mode & 0o077 == 0, oct(st.st_mode)  # private to its user
        shutil.copy(path_a, os.path.join(str(tmp_path), ".ppc-run-job-B"))
        os.chmod(os.path.join(str(tmp_path), ".ppc-run-job-B"), 0o600)
        b1 = _rank(tmp_path, 1, 2, "job-B", extra={"PP_RUN_VERBOSE": "1"})
        procs.append(b1)
        _, b_err = b1.communicate(timeout=30)
        assert b1.returncode == 1, b_err
        assert "rank 0 went away" in b_err, b_err  # its hello was refused
        # job B's secret on the engine's own path: the handshake refuses it
        with open(path_a) as f:
            info = json.load(f)
        intruder = pp.Server(ncpus=1, secret=job_secret(bytes.fromhex(info["key"]), "job-B"),
                             _connect=("127.0.0.1", info["port"]))
        a1 = _rank(tmp_path, 1, 2, "job-A")
        procs.append(a1)
        out, err = a0.communicate(timeout=40)
        assert a0.returncode == 0, out + err
        assert "RESULT 81" in out and out.count("127.0.0.1") == 1, out
        assert "TLS handshake refused" in err, err  # job B's node was refused
        assert a1.wait(timeout=20) == 0
        intruder.destroy()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.mark.timeout(30)
def test_rendezvous_file_of_another_user_is_ignored(tmp_path):
    """A planted rendezvous (other owner, or readable by others) is never
    used: a rank would otherwise serve a stranger's jobs."""
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write("print('never')\n")
    path = os.path.join(str(tmp_path), ".ppc-run-job-P")
    with open(path, "w") as f:
        f.write('{"magic": "ppc-run-1", "addrs": ["127.0.0.1"], "port": 1, "ctl": 1, '
                '"key": "00"}')
    os.chmod(path, 0o644)
    p = _rank(tmp_path, 1, 2, "job-P", extra={"PP_RUN_TIMEOUT": "1"})
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert "not private" in err and "published no rendezvous" in err, err


# ------------------------------------------------------- network namespaces

NS_A, NS_B = "ppc-run-a-%d" % os.getpid(), "ppc-run-b-%d" % os.getpid()
ADDR_A, ADDR_B = "10.213.9.1", "10.213.9.2"


@pytest.fixture
def netns_pair():
    pid = os.getpid() % 10000
    with netnsutil.netns_pair(NS_A, NS_B, "ppcra%d" % pid, "ppcrb%d" % pid,
                              ADDR_A, ADDR_B) as pair:
        yield pair


@pytest.mark.timeout(60)
def test_ranks_in_separate_network_namespaces(netns_pair, tmp_path):
    """Rank 0 in one namespace publishes its own interface addresses (no
    PP_RUN_ADDR); the node in the other dials back across the veth."""
    ns_a, ns_b = netns_pair
    with open(os.path.join(str(tmp_path), "script.py"), "w") as f:
        f.write(SECRET_SCRIPT)
    procs = [_rank(tmp_path, 0, 2, "ns-job", netns=ns_a)]
    try:
        procs.append(_rank(tmp_path, 1, 2, "ns-job", netns=ns_b))
        out, err = procs[0].communicate(timeout=40)
        assert procs[0].returncode == 0, out + err
        assert "RESULT 81" in out, out + err
        assert "NODES ['%s:" % ADDR_B in out, out  # the node came from the other side
        assert procs[1].wait(timeout=20) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
