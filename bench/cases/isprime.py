# bench/cases/isprime.py - case 1: the seed's 10,000 isprime jobs, one submit
# each (serial loop / Pool.apply_async / pp submit). Times first submit to
# last result, the pool already created and warmed by one job.
import math

import common


def isprime(n):
    """Returns True if n is prime and False otherwise"""
    if not isinstance(n, int):
        raise TypeError("argument passed to is_prime is not of 'int' type")
    if n < 2:
        return False
    if n == 2:
        return True
    max = int(math.ceil(math.sqrt(n)))
    i = 2
    while i <= max:
        if n % i == 0:
            return False
        i += 1
    return True


def main(args):
    maxval = 2000 if args.quick else 10000
    inputs = range(2, maxval)
    expect = {2000: 303, 10000: 1229}[maxval]
    impl = args.impl
    extra = {}
    if impl == "serial":
        common.PHASE[0] = "run"
        t0 = common.now()
        nprimes = [x for x in inputs if isprime(x)]
        t = common.now() - t0
    elif impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()
        pool.apply_async(isprime, (2,)).get()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [pool.apply_async(isprime, (input,)) for input in inputs]
        nprimes = [x for x in jobs if x.get()]
        t = common.now() - t0
    else:  # ppft / ppc: the seed's code, unmodified but for Python 3
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        job_server.submit(isprime, (2,), (), ("math",))()
        common.PHASE[0] = "run"
        t0 = common.now()
        results = [job_server.submit(isprime, (input,), (), ("math",)) for input in inputs]
        nprimes = [x for x in results if x() == True]  # noqa: E712 (seed's code)
        t = common.now() - t0
    if len(nprimes) != expect:
        raise RuntimeError("wrong result: %d primes, expected %d" % (len(nprimes), expect))
    extra.update(value=t, unit="s", jobs=len(inputs), jobs_per_s=len(inputs) / t)
    return extra


if __name__ == "__main__":
    a = common.parse_args()
    common.run(main, a)
