#!/usr/bin/env python3
"""Finding primes in parallel, one tiny job per number.

Shows: the cost of parallelising work that is too fine-grained.  The
serial findprimes(10000) is compared with a pp run that submits one
isprime() job per number in range(2, 10000) (with the module "math"),
then counts the jobs that returned True.  Both runs find 1229 primes;
the parallel one is much slower because of the per-job overhead.

Source: seed 000 ("10.2: ParallelPython"), section 10.2.3
"Example: Finding Primes in Parallel", ported to Python 3.

Run:  python examples/isprime_jobs.py [--max N] [--ncpus N]
"""
import argparse
import math, sys, time, pp


def isprime(n):
    if n < 2:
        return False
    if n == 2:
        return True
    # Look for factors <= sqrt(n)
    max = int(math.ceil(math.sqrt(n)))
    i = 2
    while i <= max:
        if n % i == 0:
            # We found a factor. Number is not prime.
            return False
        # This number is not a factor, move to the next one
        i += 1
    # We found no factors <= sqrt(n), this is a prime.
    return True


def findprimes(n):
    return [x for x in range(2, n) if isprime(x)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=10000, dest="maxval",
                        help="count the primes below this value (default 10000)")
    parser.add_argument("--ncpus", type=int, default=None,
                        help="number of local workers (default: autodetect)")
    opts = parser.parse_args()

    maxval = opts.maxval

    ### SINGLE PROCESS RUN
    start_time = time.time()
    result = findprimes(maxval)
    print("SINGLE: There are", len(result), "primes below", maxval)
    end_time = time.time()
    print("SINGLE Time elapsed:", end_time - start_time)

    ### PARALLEL PROCESS RUN
    start_time = time.time()
    if opts.ncpus is None:
        job_server = pp.Server()
    else:
        job_server = pp.Server(opts.ncpus)
    print("Running with", job_server.get_ncpus(), "processes.")
    inputs = range(2, maxval)
    results = [job_server.submit(isprime, (input,), (), ("math",)) for input in inputs]
    nprimes = [x for x in results if x() == True]
    print("PARALLEL: There are", len(nprimes), "primes below", maxval)
    end_time = time.time()
    print("PARALLEL Time elapsed:", end_time - start_time)

    job_server.print_stats()
    job_server.destroy()
