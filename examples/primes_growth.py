#!/usr/bin/env python3
"""Growth of primes: several coarse jobs that each call a helper.

Shows: submitting findprimes(n) for several inputs at once, shipping
the helper function isprime with depfuncs=(isprime,) and the module
"math" with modules=("math",).  The parallel run takes about as long
as the serial findprimes() of the largest input alone; the smaller
inputs come "for free".

Source: seed 000 ("10.2: ParallelPython"), section 10.2.4
"Growth of Primes", ported to Python 3.

Run:  python examples/primes_growth.py [--max N] [--ncpus N]
      (--max limits the largest input, e.g. --max 100000 for a quick run)
"""
import argparse
import math, pp, time


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
    parser.add_argument("--max", type=int, default=1000000, dest="maxval",
                        help="largest input to use (default 1000000)")
    parser.add_argument("--ncpus", type=int, default=None,
                        help="number of local workers (default: autodetect)")
    opts = parser.parse_args()

    inputvals = [v for v in [100, 1000, 10000, 100000, 1000000] if v <= opts.maxval]
    if not inputvals:
        parser.error("--max must be at least 100")
    largest = inputvals[-1]

    ### SINGLE PROCESS RUN
    start_time = time.time()
    result = findprimes(largest)
    print("SINGLE: There are", len(result), "primes below", largest)
    end_time = time.time()
    print("SINGLE Time elapsed:", end_time - start_time)

    ### PARALLEL PROCESS RUN
    if opts.ncpus is None:
        job_server = pp.Server()
    else:
        job_server = pp.Server(opts.ncpus)
    print("Running with", job_server.get_ncpus(), "processes.")
    start_time = time.time()
    results = [(input, job_server.submit(findprimes, (input,), (isprime,), ("math",))) for input in inputvals]
    for input, result in results:
        tmp = result()
        print("There are", len(result()), "primes below", input)
    end_time = time.time()
    print("PARALLEL Time elapsed:", end_time - start_time)

    job_server.print_stats()
    job_server.destroy()
