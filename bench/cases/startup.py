# bench/cases/startup.py - case 2: time from creating the pool
# (multiprocessing.Pool() / pp.Server()) until the first result of a trivial
# job is back in the client. Module imports happen before the clock starts.
import common


def trivial(x):
    return x + 1


def main(args):
    impl = args.impl
    extra = {}
    if impl == "mp":
        import multiprocessing
        common.PHASE[0] = "run"
        t0 = common.now()
        pool = multiprocessing.Pool()
        r = pool.apply_async(trivial, (1,)).get()
        t = common.now() - t0
    elif impl in ("ppft", "ppc"):
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "run"
        t0 = common.now()
        job_server = pp.Server()
        r = job_server.submit(trivial, (1,))()
        t = common.now() - t0
    else:
        raise ValueError("startup has no %s variant" % impl)
    if r != 2:
        raise RuntimeError("wrong result %r" % (r,))
    extra.update(value=t, unit="s")
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
