# bench/cases/echo.py - case 3: 4 x 64 MB payloads echoed through workers
# (def echo(x): return x). --case echo_bytes uses bytes objects, echo_numpy
# float64 arrays. 4 jobs submitted, then all results taken; reported as
# payload MB moved one way per second (4 * 64 MB / time). The serial column
# is the in-process pickle round trip (dumps+loads, protocol 5) of the same
# payloads: a reference for the serialization cost alone, nothing is moved.
import os
import pickle

import common


def echo(x):
    return x


def make_payloads(kind, n, size):
    if kind == "echo_bytes":
        return [os.urandom(size) for _ in range(n)]
    import numpy as np
    return [np.random.default_rng(i).random(size // 8) for i in range(n)]


def same(kind, a, b):
    if kind == "echo_bytes":
        return a == b
    import numpy as np
    return isinstance(b, np.ndarray) and b.dtype == a.dtype and np.array_equal(a, b)


def main(args):
    impl, kind = args.impl, args.case
    n = 4
    mb = 8 if args.quick else 64
    common.PHASE[0] = "make payloads"
    payloads = make_payloads(kind, n, mb * 1024 * 1024)
    extra = {}
    if impl == "serial":
        common.PHASE[0] = "run"
        t0 = common.now()
        out = [pickle.loads(pickle.dumps(p, protocol=5)) for p in payloads]
        t = common.now() - t0
    elif impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()
        pool.apply_async(echo, (1,)).get()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [pool.apply_async(echo, (p,)) for p in payloads]
        out = [j.get() for j in jobs]
        t = common.now() - t0
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        job_server.submit(echo, (1,))()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [job_server.submit(echo, (p,)) for p in payloads]
        out = [j() for j in jobs]
        t = common.now() - t0
    common.PHASE[0] = "verify"
    for a, b in zip(payloads, out):
        if not same(kind, a, b):
            raise RuntimeError("echoed payload differs")
    extra.update(value=t, unit="s", payload_mb=n * mb, mb_per_s=n * mb / t)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
