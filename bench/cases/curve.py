# bench/cases/curve.py - case 6: throughput curve. Jobs/s for busy-wait jobs
# of one duration (--duration seconds: 1e-6 ... 0.1). A short calibration
# batch estimates the rate, then the count is chosen so that the timed batch
# takes about --target seconds (clamped to [2*ncpus, 100000] jobs, rounded
# up to a multiple of ncpus). Timed: first submit to last result, pool
# created and warmed.
import common


def spin(d):
    end = time.perf_counter() + d
    while time.perf_counter() < end:
        pass
    return d


import time  # noqa: E402 - spin's global, also listed in pp's modules


def extra_args(ap):
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--target", type=float, default=1.0)


def main(args):
    impl, d = args.impl, args.duration
    nc = common.ncpus()
    extra = {"duration": d}
    if impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()

        def batch(n):
            rs = [pool.apply_async(spin, (d,)) for _ in range(n)]
            return [r.get() for r in rs]
    elif impl in ("ppft", "ppc"):
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()

        def batch(n):
            js = [job_server.submit(spin, (d,), (), ("time",)) for _ in range(n)]
            return [j() for j in js]
    else:
        raise ValueError("curve has no %s variant" % impl)
    common.PHASE[0] = "warm"
    batch(nc)
    common.PHASE[0] = "calibrate"
    c0 = int(min(500, max(2 * nc, 0.1 * nc / d)))
    t0 = common.now()
    batch(c0)
    r0 = c0 / (common.now() - t0)
    n = int(min(100000, max(2 * nc, r0 * args.target)))
    n = -(-n // nc) * nc  # whole rounds over the workers: no ragged tail
    common.PHASE[0] = "run"
    t0 = common.now()
    res = batch(n)
    t = common.now() - t0
    if len(res) != n or res[0] != d:
        raise RuntimeError("wrong results")
    extra.update(value=n / t, unit="jobs/s", jobs=n, seconds=t,
                 ideal=nc / d, calib_rate=r0)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args(extra_args))
