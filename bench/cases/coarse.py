# bench/cases/coarse.py - case 4: coarse jobs. --case sum_primes: the seed's
# sum_primes over 8 inputs (100000, 100100, ..., 100700); --case mandelbrot:
# 500x500 points, 1000 iterations, pure Python calculate_z (PyCon 2013
# demo) in 100 contiguous chunks. --impl bare is the bare-process limit:
# os.cpu_count() forked processes, each computing a static share (i::N) of
# the same jobs and piping its results back; no framework at all.
import math
import os
import pickle

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


def sum_primes(n):
    """Calculates sum of all primes below given integer n"""
    return sum([x for x in range(2, n) if isprime(x)])


def calculate_z(q, maxiter, z):
    """Pure python with complex datatype, iterating over list of q and z"""
    output = [0] * len(q)
    for i in range(len(q)):
        zi = z[i]
        qi = q[i]
        for iteration in range(maxiter):
            zi = zi * zi + qi
            if abs(zi) > 2.0:
                output[i] = iteration
                break
    return output


def mandel_jobs(size, maxiter, nchunks):
    """The demo's grid over [-2.13, 0.77] x [-1.3, 1.3], size x size points,
    split into nchunks contiguous (q, maxiter, z) argument tuples."""
    x1, x2, y1, y2 = -2.13, 0.77, -1.3, 1.3
    xs = [x1 + (x2 - x1) * i / size for i in range(size)]
    ys = [y2 + (y1 - y2) * j / size for j in range(size)]
    q = [complex(x, y) for y in ys for x in xs]
    z = [0j] * len(q)
    step = (len(q) + nchunks - 1) // nchunks
    return [(q[i:i + step], maxiter, z[i:i + step]) for i in range(0, len(q), step)]


def bare(func, arglist, nproc):
    """Fork nproc children; child k runs arglist[k::nproc] and pickles its
    results back through a pipe. Returns results in submission order."""
    kids = []
    for k in range(nproc):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                res = [(i, func(*arglist[i])) for i in range(k, len(arglist), nproc)]
                data = pickle.dumps(res, protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            finally:
                os._exit(0)
        os.close(w)
        kids.append((pid, r))
    out = [None] * len(arglist)
    for pid, r in kids:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        for i, v in pickle.loads(data):
            out[i] = v
    return out


def main(args):
    impl, case = args.impl, args.case
    if case == "sum_primes":
        n0 = 20000 if args.quick else 100000
        arglist = [(n0 + 100 * i,) for i in range(8)]
        func, depfuncs, modules = sum_primes, (isprime,), ("math",)
        check = sum
    elif case == "mandelbrot":
        size, maxiter, nchunks = (200, 300, 100) if args.quick else (500, 1000, 100)
        arglist = mandel_jobs(size, maxiter, nchunks)
        func, depfuncs, modules = calculate_z, (), ()
        check = lambda res: sum(sum(r) for r in res)  # noqa: E731
    else:
        raise ValueError("unknown case %s" % case)
    extra = {"jobs": len(arglist), "nproc": common.ncpus()}
    if impl == "serial":
        common.PHASE[0] = "run"
        t0 = common.now()
        res = [func(*a) for a in arglist]
        t = common.now() - t0
    elif impl == "bare":
        common.PHASE[0] = "run"
        t0 = common.now()
        res = bare(func, arglist, common.ncpus())
        t = common.now() - t0
    elif impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()
        pool.apply_async(isprime, (2,)).get()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [pool.apply_async(func, a) for a in arglist]
        res = [j.get() for j in jobs]
        t = common.now() - t0
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        job_server.submit(isprime, (2,), (), ("math",))()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [job_server.submit(func, a, depfuncs, modules) for a in arglist]
        res = [j() for j in jobs]
        t = common.now() - t0
    extra.update(value=t, unit="s", checksum=check(res))
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
