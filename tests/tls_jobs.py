"""Job functions of the TLS attack suite (tests/test_tls_attack.py),
imported by reference on ppserver workers. Standard library only."""
import os


def echo_tagged(s):
    """The argument back, with the pid of the process that ran it."""
    return s, os.getpid()


def append_line(path, text):
    """Leaves a trace of every run: one line appended to path."""
    with open(path, "a") as f:
        f.write(text + "\n")
    return text
