# bench/cases/memory.py - case 5: memory. --case mem_pending: client RSS
# growth (/proc/self/statm) per pending tiny job, after N submits whose
# results are never collected and which cannot run yet (every worker
# blocked in a sleeping job). The job handles are
# kept in a list, as a user would. --case worker_rss: resident size of the
# worker processes (VmRSS of every descendant of the client, found by
# scanning /proc), after each worker has run jobs.
import gc
import time

import common


def tiny(x):
    return -x


def blocker(s):
    import time
    time.sleep(s)
    return s


def pending(args):
    impl = args.impl
    extra = {}
    if impl == "mp":
        import multiprocessing
        n = 20000 if args.quick else 200000
        pool = multiprocessing.Pool()
        common.PHASE[0] = "block workers"
        for _ in range(common.ncpus()):
            pool.apply_async(blocker, (3600,))
        time.sleep(0.5)
        submit = lambda: pool.apply_async(tiny, (-1,))  # noqa: E731
        extra["setup"] = "Pool(), all workers blocked"
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        n = {("ppft", False): 200000, ("ppft", True): 20000,
             ("ppc", False): 1000000, ("ppc", True): 100000}[(impl, bool(args.quick))]
        # as for mp: every worker busy in a sleeping job, so the jobs stay
        # queued in the client (ncpus=0 would fail them at once in ppc:
        # no node can run them)
        common.PHASE[0] = "pp.Server(), all workers blocked"
        job_server = pp.Server(ncpus=common.ncpus())
        for _ in range(common.ncpus()):
            job_server.submit(blocker, (3600,))
        time.sleep(0.5)
        extra["setup"] = "Server(), all workers blocked"
        submit = lambda: job_server.submit(tiny, (-1,))  # noqa: E731
        submit()  # first submit ships/caches the function: not per-job memory
    gc.collect()
    common.PHASE[0] = "submit"
    jobs = []
    before = common.rss_self()
    t0 = common.now()
    for _ in range(n):
        jobs.append(submit())
    t = common.now() - t0
    after = common.rss_self()
    extra.update(value=(after - before) / n, unit="B/job", jobs=n,
                 rss_before_mb=before / 2**20, rss_after_mb=after / 2**20,
                 submit_per_s=n / t)
    return extra


def worker_rss(args):
    impl = args.impl
    extra = {}
    nj = 4 * common.ncpus()
    if impl == "mp":
        import multiprocessing
        pool = multiprocessing.Pool()
        common.PHASE[0] = "jobs"
        rs = [pool.apply_async(blocker, (0.05,)) for _ in range(nj)]
        [r.get() for r in rs]
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        common.PHASE[0] = "jobs"
        js = [job_server.submit(blocker, (0.05,)) for _ in range(nj)]
        [j() for j in js]
    common.PHASE[0] = "scan /proc"
    kids = common.descendants()
    sizes = {p: common.vmrss_kb(p) for p in kids}
    sizes = {p: s for p, s in sizes.items() if s}
    if not sizes:
        raise RuntimeError("no worker processes found")
    mean_mb = sum(sizes.values()) / len(sizes) / 1024
    extra.update(value=mean_mb, unit="MB/worker", workers=len(sizes),
                 total_mb=sum(sizes.values()) / 1024,
                 client_mb=common.rss_self() / 2**20,
                 procs=[[common.cmdline(p)[:80], round(s / 1024, 1)] for p, s in sizes.items()])
    return extra


def main(args):
    if args.case == "mem_pending":
        return pending(args)
    if args.case == "worker_rss":
        return worker_rss(args)
    raise ValueError("unknown case %s" % args.case)


if __name__ == "__main__":
    common.run(main, common.parse_args())
