"""Job functions of the cluster suites, imported by reference on ppserver
workers (the PPServer helper puts tests/ on their path). Standard library
only."""
import os
import time


def square_pid(x):
    return x * x, os.getpid()


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x, os.getpid()


def where(x):
    return x, os.getpid(), os.getppid()


def divide(a, b):
    return a / b
