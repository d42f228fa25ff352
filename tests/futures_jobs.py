"""Job functions for the futures, map and executor suites (imported by
workers and ppservers by reference)."""
import os
import time


def sleep_pid(seconds, tag=None):
    time.sleep(seconds)
    return os.getpid() if tag is None else (tag, os.getpid())


def mark_and_sleep(path, seconds):
    """Leave a file (the job ran), then sleep."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return path


def die_until(counter, deaths):
    """Count runs in a file; the worker dies in each of the first `deaths`."""
    n = 0
    if os.path.exists(counter):
        with open(counter) as f:
            n = int(f.read() or 0)
    n += 1
    with open(counter, "w") as f:
        f.write(str(n))
    if n <= deaths:
        os._exit(3)
    return n


def raise_counted(counter):
    with open(counter, "a") as f:
        f.write("x")
    raise ValueError("raised on purpose")


def square(x):
    return x * x


def add(a, b):
    return a + b


def inc(x):
    return x + 1


def fail_at(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


def slow_id(x, seconds=0.2):
    time.sleep(seconds)
    return x
