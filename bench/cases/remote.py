# bench/cases/remote.py - case 7: remote throughput over loopback. Starts
# one ppserver (-i 127.0.0.1 -p PORT -w 2 -s SECRET -t 120; -s is fine for a
# throwaway secret on a benchmark machine) from this
# interpreter's bin/ (ppft's `ppserver`, or ours), then a client
# pp.Server(ncpus=0, ppservers=("127.0.0.1:PORT",), secret=SECRET) runs
# tiny jobs, one submit each (10,000 for ppc, 500 for ppft, fewer if a
# 100-job probe shows they would take over ~15 s); reports jobs/s. The
# server and its workers are killed at the end (and by the driver, which
# also kills the whole process group). Only 127.0.0.1 is ever used.
import os
import secrets
import subprocess
import sys
import tempfile

import common


def tiny(x):
    return x + 1


def extra_args(ap):
    ap.add_argument("--jobs", type=int, default=0)


def main(args):
    impl = args.impl
    if impl not in ("ppft", "ppc"):
        raise ValueError("remote has no %s variant" % impl)
    bindir = os.path.dirname(sys.executable)
    server = next((os.path.join(bindir, name) for name in ("ppserver", "ppserver.py")
                   if os.path.exists(os.path.join(bindir, name))), None)
    if server is None:
        common.finish({"case": args.case, "impl": impl, "na": "not built"}, 0)
    n = args.jobs or {("ppft", False): 500, ("ppft", True): 100,
                      ("ppc", False): 10000, ("ppc", True): 2000}[(impl, bool(args.quick))]
    pp = common.import_pp(impl)
    extra = common.pp_info(pp)
    port, secret = common.free_port(), secrets.token_hex(16)
    log = tempfile.NamedTemporaryFile(prefix="ppserver-", suffix=".log", delete=False)
    cmd = [server, "-i", "127.0.0.1", "-p", str(port), "-w", "2", "-s", secret, "-t", "120"]
    common.PHASE[0] = "start ppserver"
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    common.register_node(proc)
    # no explicit kill here: common.finish() kills every descendant (the
    # server and its workers, found while the server still lives) on every
    # exit path, and the driver kills the process group and the pid file.
    err = common.wait_port(port, proc, 20)
    if err:
        log.flush()
        with open(log.name, errors="replace") as f:
            tail = f.read().strip()
        sys.stderr.write("ppserver log:\n%s\n" % tail[-3000:])
        last = tail.splitlines()[-1] if tail else "(no output)"
        raise RuntimeError("ppserver %s: %s" % (err, last[:200]))
    common.PHASE[0] = "client connect + first job"
    job_server = pp.Server(ncpus=0, ppservers=("127.0.0.1:%d" % port,), secret=secret)
    if job_server.submit(tiny, (1,))() != 2:
        raise RuntimeError("wrong warm-up result")
    # a slow path must not eat the bench: a 100-job probe caps the timed
    # count at ~15 s of work (jobs/s is then extrapolated from fewer jobs)
    common.PHASE[0] = "probe"
    t0 = common.now()
    [j() for j in [job_server.submit(tiny, (i,)) for i in range(100)]]
    r0 = 100 / (common.now() - t0)
    asked = n
    n = max(100, min(n, int(r0 * 15)))
    common.PHASE[0] = "run"
    t = common.time_tiny(job_server, tiny, n)
    os.unlink(log.name)
    extra.update(value=n / t, unit="jobs/s", jobs=n, jobs_asked=asked, seconds=t, workers=2)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args(extra_args))
