"""Jobs as futures: pp.wait, pp.as_completed, `await job`, and the
TimeoutError a job raises when it runs past submit's timeout.

A Job (what Server.submit returns) has concurrent.futures' methods itself
(src/py/pyjob.c); this module holds what is easier in Python and needed
once per call, not per job. Imported on first use (``pp.wait``,
``pp.as_completed``, ``await job``), never by ``import pp``.
"""
import builtins
import collections
import concurrent.futures as _cf
import sys
import threading
import time

FIRST_COMPLETED = _cf.FIRST_COMPLETED
FIRST_EXCEPTION = _cf.FIRST_EXCEPTION
ALL_COMPLETED = _cf.ALL_COMPLETED
CancelledError = _cf.CancelledError

if sys.version_info >= (3, 11):
    TimeoutError = builtins.TimeoutError  # concurrent.futures.TimeoutError is this one
else:
    class TimeoutError(builtins.TimeoutError, _cf.TimeoutError):
        """A job ran past its timeout (also a concurrent.futures.TimeoutError)."""

DoneAndNotDoneFutures = collections.namedtuple("DoneAndNotDoneFutures", "done not_done")


class _Waiter(object):
    """Collects finished futures for wait and as_completed (done callbacks
    call it from the Server's events thread)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.finished = []

    def __call__(self, f):
        with self.cond:
            self.finished.append(f)
            self.cond.notify_all()


def _failed(f):
    return not f.cancelled() and f.exception() is not None


def wait(fs, timeout=None, return_when=ALL_COMPLETED):
    """concurrent.futures.wait for jobs (and concurrent futures):
    DoneAndNotDoneFutures(done, not_done) of sets."""
    fs = set(fs)
    done = {f for f in fs if f.done()}
    not_done = fs - done
    if return_when == FIRST_COMPLETED and done:
        return DoneAndNotDoneFutures(done, not_done)
    if return_when == FIRST_EXCEPTION and any(_failed(f) for f in done):
        return DoneAndNotDoneFutures(done, not_done)
    if not not_done:
        return DoneAndNotDoneFutures(done, not_done)
    waiter = _Waiter()
    for f in not_done:
        f.add_done_callback(waiter)
    deadline = None if timeout is None else time.monotonic() + timeout
    with waiter.cond:
        while True:
            newly = set(waiter.finished) & not_done
            if newly:
                done |= newly
                not_done -= newly
            if not not_done or (return_when == FIRST_COMPLETED and newly) or (
                    return_when == FIRST_EXCEPTION and any(_failed(f) for f in newly)):
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            waiter.cond.wait(left)
    return DoneAndNotDoneFutures(done, not_done)


def as_completed(fs, timeout=None):
    """Yield jobs (or concurrent futures) as they finish, as
    concurrent.futures.as_completed does; TimeoutError (concurrent's) when
    timeout seconds pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fs = set(fs)
    pending = set()
    for f in fs:
        if f.done():
            yield f
        else:
            pending.add(f)
    if not pending:
        return
    waiter = _Waiter()
    for f in pending:
        f.add_done_callback(waiter)
    while pending:
        with waiter.cond:
            while not waiter.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _cf.TimeoutError("%d (of %d) futures unfinished" % (len(pending), len(fs)))
                waiter.cond.wait(left)
            got, waiter.finished = waiter.finished, []
        for f in got:
            if f in pending:
                pending.discard(f)
                yield f


def _settle(fut, job):
    if fut.cancelled():
        return
    if job.cancelled():
        fut.cancel()
        return
    try:
        fut.set_result(job.result())
    except BaseException as e:  # the job's own exception, whatever it is
        fut.set_exception(e)


def _await(job):
    """job.__await__: an asyncio future of the running loop, settled by the
    job's done callback through one call_soon_threadsafe (no thread)."""
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(j):
        try:
            loop.call_soon_threadsafe(_settle, fut, j)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits any more

    job.add_done_callback(done)
    return fut.__await__()
