# bench/cases/mpi.py - case 8: a 4-rank job under Open MPI's mpirun on this
# machine, ppc (`python -m pp.run`) against mpi4py.futures' MPIPoolExecutor
# (`python -m mpi4py.futures`, from bench/.venv-mpi4py: mpi4py built against
# the system's Open MPI). Two cases:
#   mpi_tiny:    10,000 tiny jobs, one submit each, first submit to last
#                result, timed inside rank 0 once every rank serves (s);
#   mpi_startup: from launching mpirun to the first result printed by rank 0
#                (s), interpreters, imports and rendezvous included.
# ppc: rank 0 runs the script with its own worker and the 3 other ranks as
# nodes (1 worker each: 2 cores / 4 ranks rounds to 1); mpi4py: rank 0 is
# the master, ranks 1-3 the workers. Only 127.0.0.1 is used.
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common

HERE = os.path.dirname(os.path.abspath(__file__))
MPI4PY_PY = os.path.join(os.path.dirname(HERE), ".venv-mpi4py", "bin", "python")

PPC_SCRIPT = r"""
import sys, time
import pp
def tiny(x):
    return x + 1
n = int(sys.argv[1])
s = pp.Server()
print("FIRST %r" % time.time() if s.submit(tiny, (1,))() == 2 else "WRONG", flush=True)
t = time.time()
while sum(1 for k, v in s.get_active_nodes().items() if v and k != "local") < 3:
    assert time.time() - t < 30, s.get_active_nodes()
    time.sleep(0.001)
[j() for j in [s.submit(tiny, (i,)) for i in range(100)]]  # warm: every node has the function
t0 = time.perf_counter()
res = [j() for j in [s.submit(tiny, (i,)) for i in range(n)]]
t = time.perf_counter() - t0
assert res == [i + 1 for i in range(n)]
print("TINY %r" % t, flush=True)
print("REMOTE %d" % sum(st.njobs for k, st in s.get_stats().items() if k != "local"), flush=True)
"""

MPI4PY_SCRIPT = r"""
import sys, time
from mpi4py.futures import MPIPoolExecutor
def tiny(x):
    return x + 1
if __name__ == "__main__":
    n = int(sys.argv[1])
    with MPIPoolExecutor() as ex:
        print("FIRST %r" % time.time() if ex.submit(tiny, 1).result() == 2 else "WRONG",
              flush=True)
        ex.bootup(wait=True)
        [f.result() for f in [ex.submit(tiny, i) for i in range(100)]]
        t0 = time.perf_counter()
        res = [f.result() for f in [ex.submit(tiny, i) for i in range(n)]]
        t = time.perf_counter() - t0
        assert res == [i + 1 for i in range(n)]
        print("TINY %r" % t, flush=True)
"""


def extra_args(ap):
    ap.add_argument("--jobs", type=int, default=0)


def main(args):
    mpirun = shutil.which("mpirun")
    if not mpirun:
        common.finish({"case": args.case, "impl": args.impl,
                       "na": "mpirun missing (apt-get install openmpi-bin)"}, 0)
    if args.impl == "mpi4py":
        py = MPI4PY_PY
        if not os.path.exists(py):
            common.finish({"case": args.case, "impl": args.impl,
                           "na": "bench/.venv-mpi4py not built (run bench/run.sh)"}, 0)
        script, launch = MPI4PY_SCRIPT, [py, "-m", "mpi4py.futures"]
    elif args.impl == "ppc":
        py = sys.executable
        script, launch = PPC_SCRIPT, [py, "-m", "pp.run"]
    else:
        raise ValueError("mpi has no %s variant" % args.impl)
    n = args.jobs or (2000 if args.quick else 10000)
    if args.case == "mpi_startup":
        n = 1
    d = tempfile.mkdtemp(prefix="bench-mpi-")
    path = os.path.join(d, "job.py")
    with open(path, "w") as f:
        f.write(script)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PP_RUN_ADDR="127.0.0.1", OMPI_MCA_btl_tcp_if_include="lo",
               OMPI_MCA_oob_tcp_if_include="lo")
    cmd = [mpirun, "--oversubscribe", "-n", "4", "-x", "PP_RUN_ADDR"] + launch + [path, str(n)]
    common.PHASE[0] = "mpirun"
    t_launch = time.time()
    p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True,
                       timeout=max(10.0, args.timeout - 10))
    shutil.rmtree(d, ignore_errors=True)
    first = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("FIRST ")]
    tiny = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("TINY ")]
    if p.returncode != 0 or not first or not tiny:
        tail = (p.stderr or p.stdout).strip().splitlines()
        raise RuntimeError("mpirun exit %s: %s" % (p.returncode, tail[-1][:200] if tail else ""))
    startup = float(first[0]) - t_launch
    value = startup if args.case == "mpi_startup" else float(tiny[0])
    remote = [int(ln.split()[1]) for ln in p.stdout.splitlines() if ln.startswith("REMOTE ")]
    # ppc: jobs (warm-up included) that ran on the other ranks, not rank 0's worker
    return {"value": value, "unit": "s", "jobs": n, "startup_s": startup, "ranks": 4,
            "jobs_on_other_ranks": remote[0] if remote else None}


if __name__ == "__main__":
    common.run(main, common.parse_args(extra_args))
