# bench/cases/startup.py - case 2: interpreter start to first result,
# imports included. Starts a fresh interpreter (`python child.py`, the same
# interpreter as the case) whose script imports the package
# (multiprocessing / pp), makes the pool (multiprocessing.Pool() /
# pp.Server()) and runs one trivial job. The child is a script file, not
# `python -c`, because pp ships a function by its source, as from a user's
# script. perf_counter is CLOCK_MONOTONIC, one clock for every process, so
# the child's timestamps and ours combine. Reported: value = from the
# script's first line (the interpreter has started) to the first result,
# imports included; launch_s = from just before this process starts the
# child until the child's line saying the first result is back reaches it
# (Python's own start-up and site included, the same for every column);
# and the parts: interpreter_s, import_s, first_result_s (pool made and
# first job done). The child's shutdown is not timed.
import os
import shutil
import subprocess
import sys
import tempfile

import common

# The child script; only the import and the pool's three lines differ.
CHILD_TEMPLATE = """
import time
t_start = time.perf_counter()
import %(module)s
t_import = time.perf_counter()


def trivial(x):
    return x + 1


if __name__ == "__main__":
    %(make)s
    r = %(run)s
    t_first = time.perf_counter()
    print(t_start, t_import, t_first, r, flush=True)
    %(stop)s
"""
CHILD = {
    "mp": CHILD_TEMPLATE % {"module": "multiprocessing", "make": "pool = multiprocessing.Pool()",
                            "run": "pool.apply_async(trivial, (1,)).get()",
                            "stop": "pool.terminate()"},
    "pp": CHILD_TEMPLATE % {"module": "pp", "make": "job_server = pp.Server()",
                            "run": "job_server.submit(trivial, (1,))()",
                            "stop": "job_server.destroy()"},
}


def main(args):
    impl = args.impl
    if impl not in ("mp", "ppft", "ppc"):
        raise ValueError("startup has no %s variant" % impl)
    extra = {}
    if impl != "mp":
        pp = common.import_pp(impl)          # checks which pp this interpreter has
        extra.update(common.pp_info(pp))
    d = tempfile.mkdtemp(prefix="bench-startup-")
    try:
        path = os.path.join(d, "child.py")
        with open(path, "w") as f:
            f.write(CHILD["mp" if impl == "mp" else "pp"])
        common.PHASE[0] = "run"
        t0 = common.now()
        p = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, cwd=d)
        line = p.stdout.readline()
        t = common.now() - t0
        common.PHASE[0] = "child exit"
        rest = p.stdout.read()
        rc = p.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    try:
        t_start, t_import, t_first, r = line.split()
        t_start, t_import, t_first = float(t_start), float(t_import), float(t_first)
    except ValueError:
        raise RuntimeError("child (exit %s) printed %r" % (rc, (line + rest)[:200]))
    if r != b"2" or rc != 0:
        raise RuntimeError("wrong result %r (child exit %s)" % (r, rc))
    extra.update(value=t_first - t_start, unit="s", launch_s=t, interpreter_s=t_start - t0,
                 import_s=t_import - t_start, first_result_s=t_first - t_import)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
