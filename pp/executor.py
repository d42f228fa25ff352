"""pp.Executor: a concurrent.futures.Executor over a pp Server (local
cores, ppservers, secret).

submit returns concurrent.futures.Future objects, so the stdlib's
as_completed and wait, asyncio.wrap_future and loop.run_in_executor work
with them. Functions ship as for Server.submit (lambdas, closures,
__main__ functions and classes); a function of __main__ (or without a
module) takes its module's globals along, so the modules it imports at top
level are imported in the worker too. map runs in chunks (Server.imap).
"""
import concurrent.futures as _cf
import functools
import threading
import time

from . import _ppc


class _JobFuture(_cf.Future):
    """A Future bound to its job: cancel() cancels the job (only while it is
    queued), running() asks the job."""

    def __init__(self, job=None):
        _cf.Future.__init__(self)
        self._job = job

    def cancel(self):
        job = self._job
        if job is not None and not job.cancel():
            return False
        return _cf.Future.cancel(self)

    def running(self):
        job = self._job
        return job.running() if job is not None else _cf.Future.running(self)


def _main_globals(fn):
    """The globals a function of __main__ brings along (its top-level
    imports), or None for functions shipped by reference."""
    g = getattr(fn, "__globals__", None)
    if g is None or not isinstance(g, dict):
        return None
    return g if g.get("__name__") == "__main__" else None


class Executor(_cf.Executor):
    """Executor(max_workers=None, *, ppservers=(), secret=None, **server_options)

    max_workers: local worker processes (None: one per core; 0 with
    ppservers: remote nodes only). The other options are pp.Server's."""

    def __init__(self, max_workers=None, *, ppservers=(), secret=None, **server_options):
        from . import Server
        if max_workers is not None and max_workers < 0:
            raise ValueError("max_workers must be >= 0")
        ncpus = "autodetect" if max_workers is None else max_workers
        self._server = Server(ncpus, ppservers=ppservers, secret=secret, **server_options)
        self._lock = threading.Lock()
        self._shutdown = False
        self._futures = set()  # not yet done: for shutdown(cancel_futures=True)

    def _done(self, fut, job):
        with self._lock:
            self._futures.discard(fut)
        if fut.cancelled():
            return
        if job.cancelled():
            _cf.Future.cancel(fut)
            fut.set_running_or_notify_cancel()
            return
        exc = job.exception()
        if exc is None:
            fut.set_result(job.result())
        else:
            fut.set_exception(exc)

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            g = _main_globals(fn)
            if kwargs:
                job = self._server.submit(_ppc.Chunk(fn, 2), (args, kwargs), globals=g)
            else:
                job = self._server.submit(fn, args, globals=g)
            fut = _JobFuture(job)
            self._futures.add(fut)
        job.add_done_callback(functools.partial(self._done, fut))
        return fut

    def map(self, fn, *iterables, timeout=None, chunksize=None, buffersize=None):
        """Results of fn over the iterables, in order, as an iterator; chunks
        sized from measured time when chunksize is None; at most buffersize
        items in flight when given. TimeoutError when a result is not there
        within timeout seconds of this call."""
        from . import _map
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or a positive integer")
        if chunksize == 1 and buffersize is None:
            chunksize = None  # the stdlib's default means 'no chunking': ours chooses
        deadline = None if timeout is None else time.monotonic() + timeout
        return _map.imap(self._server, fn, *iterables, chunksize=chunksize,
                         depfuncs=(), modules=(), deadline=deadline, max_items=buffersize,
                         globals=_main_globals(fn))

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            _cf.wait(pending)
            self._server.destroy()
        else:
            def finish():
                _cf.wait(pending)
                self._server.destroy()
            threading.Thread(target=finish, name="pp.Executor shutdown", daemon=True).start()

    @property
    def server(self):
        """The pp.Server underneath (get_stats, print_stats, set_ncpus...)."""
        return self._server
