#!/usr/bin/env python3
"""Callbacks, callback arguments and job groups.

Shows: submit(..., callback=..., callbackargs=..., group=...) and
job_server.wait(group).  Each job computes a partial sum of a series;
instead of keeping the job objects, the results are handed to a
callback (a bound method) that adds them into a shared total under a
lock (callbacks run in the job server's threads, and += is not atomic).
callbackargs are passed to the callback before the job's result.
The jobs are put into two groups and each group is waited for on its
own with job_server.wait(group).

  group "ln2": 1 - 1/2 + 1/3 - 1/4 + ...  -> ln(2)
  group "pi":  4 * (1 - 1/3 + 1/5 - 1/7 + ...)  -> pi

Source: modelled on the callback.py example shipped with Parallel
Python (pp) 1.6 -- "sum of partial sums with a lock" -- written for
Python 3 (threading.Lock instead of thread.allocate_lock).

Run:  python examples/callbacks.py [ncpus]
"""
import math
import sys
import threading
import time

import pp


class Sum:
    """Accumulates the results of the jobs of one group."""

    def __init__(self, name):
        self.name = name
        self.value = 0.0
        self.count = 0
        self.parts = set()
        self.lock = threading.Lock()

    # the callback function: callbackargs first, then the job's result
    def add(self, index, value):
        # we must use a lock here because += is not atomic
        with self.lock:
            self.value += value
            self.count += 1
            self.parts.add(index)


def part_sum(start, end):
    """Calculates partial sum of 1 - 1/2 + 1/3 - 1/4 + ... for start <= x < end"""
    sum = 0.0
    for x in range(start, end):
        if x % 2 == 0:
            sum -= 1.0 / x
        else:
            sum += 1.0 / x
    return sum


def leibniz_part(start, end):
    """Calculates partial sum of 4 * (1 - 1/3 + 1/5 - ...) over terms start <= k < end"""
    sum = 0.0
    for k in range(start, end):
        sum += (-1.0) ** k / (2 * k + 1)
    return 4.0 * sum


if __name__ == "__main__":
    print("""Usage: python callbacks.py [ncpus]
    [ncpus] - the number of workers to run in parallel,
    if omitted it will be set to the number of processors in the system
""")

    start = 1
    end = 2000000

    # Divide each task into 64 subtasks
    parts = 64
    step = (end - start) // parts + 1

    # tuple of all parallel python servers to connect with
    ppservers = ()
    #ppservers = ("localhost",)

    if len(sys.argv) > 1:
        ncpus = int(sys.argv[1])
        # Creates jobserver with ncpus workers
        job_server = pp.Server(ncpus, ppservers=ppservers)
    else:
        # Creates jobserver with automatically detected number of workers
        job_server = pp.Server(ppservers=ppservers)

    print("Starting pp with", job_server.get_ncpus(), "workers")

    # Create an instance of the callback class for each group
    ln2 = Sum("ln2")
    pi = Sum("pi")

    start_time = time.time()
    for index in range(parts):
        starti = start + index * step
        endi = min(start + (index + 1) * step, end)
        # Submit a job which will calculate a partial sum
        # part_sum - the function
        # (starti, endi) - tuple with arguments for part_sum
        # callback=ln2.add - callback function, called as ln2.add(index, result)
        # callbackargs=(index,) - extra arguments given to the callback
        # group="ln2" - the group of the job, for job_server.wait("ln2")
        job_server.submit(part_sum, (starti, endi), callback=ln2.add,
                          callbackargs=(index,), group="ln2")
    for index in range(parts):
        starti = index * step
        endi = min((index + 1) * step, end)
        job_server.submit(leibniz_part, (starti, endi), callback=pi.add,
                          callbackargs=(index,), group="pi")

    # wait for the jobs of group "ln2" only
    job_server.wait("ln2")
    print("Group ln2:", ln2.count, "of", parts, "jobs done,",
          "all parts present:", ln2.parts == set(range(parts)))
    print("Partial sum is", ln2.value, "| diff =", math.log(2) - ln2.value)

    # wait for the jobs of group "pi"
    job_server.wait("pi")
    print("Group pi:", pi.count, "of", parts, "jobs done,",
          "all parts present:", pi.parts == set(range(parts)))
    print("Leibniz sum is", pi.value, "| diff =", math.pi - pi.value)

    # wait for jobs in all groups to finish (nothing left here)
    job_server.wait()

    print("Time elapsed: ", time.time() - start_time, "s")
    job_server.print_stats()
    job_server.destroy()
