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
import threading
import time

from . import _ppc


class _WatchList(list):
    """A Future's waiter list: the stdlib's wait() and as_completed() add
    their waiter here, which makes the future follow its job from then on."""

    __slots__ = ("fut",)

    def append(self, waiter):
        list.append(self, waiter)
        self.fut._watch()


class _JobFuture(_cf.Future):
    """A Future bound to its job, settled lazily: from the job's done
    callback once something needs notifying (add_done_callback, the
    stdlib's wait/as_completed, asyncio), else by exception(), done() or
    repr() in the caller's thread: a future only waited on costs no event.
    result() without a timeout returns the job's value as is (in C) and
    leaves the future to be settled by those: the job is the truth, and
    settling without the condition could slip between a waiter's look at
    _state and its registering. cancel() cancels the job (only while it is
    queued); running() asks it.

    The futures of one Executor share one condition (an RLock: the stdlib
    takes several futures' conditions at once), held by the Executor's own
    subclass: result() and exception() wait on the job, GIL-free, never on
    the condition. Making a future (Executor.submit, in C) fills its _job
    slot and nothing else: Future.__init__'s fields are class defaults."""

    _state = "PENDING"
    _result = None
    _exception = None
    _done_callbacks = ()  # a list once a callback is added
    __slots__ = ("_job",)  # filled by whoever makes the future (read in C)
    _watched = False
    _wl = None

    def __init__(self, job):
        self._job = job

    @property
    def _waiters(self):
        w = self._wl
        if w is None:
            w = self._wl = _WatchList()
            w.fut = self
        return w

    def _watch(self):
        if not self._watched:
            self._watched = True
            self._job.add_done_callback(self._settle)

    def _settle(self, job=None):
        job = self._job
        if self._state != _PENDING:
            return
        try:
            if job.cancelled():
                if _cf.Future.cancel(self):
                    self.set_running_or_notify_cancel()
                return
            exc = job.exception()
            if exc is None:
                self.set_result(job.result())
            else:
                self.set_exception(exc)
        except _cf.InvalidStateError:
            pass  # settled by another thread meanwhile

    def done(self):
        if self._state == _PENDING and self._job.done():
            self._settle()
        return _cf.Future.done(self)

    def _wait_job(self, timeout):
        if self._state == _PENDING:
            try:
                self._job.exception(timeout)  # waits without the GIL
            except _cf.CancelledError:
                pass
            self._settle()

    # the common case in C (pp._ppc._future_result), every case here
    result = _ppc._future_result

    def _result_py(self, timeout=None):
        if self._state == _PENDING:
            try:
                value = self._job.result(timeout)  # waits without the GIL
            except BaseException:
                if not self._job.done():
                    raise  # the wait timed out, or was interrupted
            else:
                with self._rlock:
                    if self._state == _PENDING and self._wl is None and not self._done_callbacks:
                        # nobody to notify: finished without the stdlib's machinery
                        self._result = value
                        self._state = _FINISHED
                        return value
                try:
                    self.set_result(value)
                except _cf.InvalidStateError:
                    pass  # settled by the done callback meanwhile
                return value
            self._settle()
        return _cf.Future.result(self, 0)

    def exception(self, timeout=None):
        self._wait_job(timeout)
        return _cf.Future.exception(self, 0)

    def add_done_callback(self, fn):
        if type(self._done_callbacks) is tuple:
            self._done_callbacks = []
        self._watch()
        _cf.Future.add_done_callback(self, fn)

    def cancel(self):
        if self._state == _PENDING and not self._job.cancel():
            return False
        if not _cf.Future.cancel(self):
            return False
        if self._state == "CANCELLED":
            self.set_running_or_notify_cancel()  # waiters see it, as an executor's worker would
        return True

    def running(self):
        return self._state == _PENDING and self._job.running()

    def __repr__(self):
        self.done()  # result() leaves a finished future to be settled here
        return _cf.Future.__repr__(self)


_PENDING = "PENDING"  # concurrent.futures._base's state names
_FINISHED = "FINISHED"


def _main_globals(fn):
    """The globals a function of __main__ brings along (its top-level
    imports), or None for functions shipped by reference."""
    g = getattr(fn, "__globals__", None)
    if g is None or not isinstance(g, dict):
        return None
    return g if g.get("__name__") == "__main__" else None


class Executor(_ppc._ExecutorCore, _cf.Executor):
    """Executor(max_workers=None, *, ppservers=(), secret=None, **server_options)

    max_workers: local worker processes (None: one per core; 0 with
    ppservers: remote nodes only). The other options are pp.Server's."""

    def __init__(self, max_workers=None, *, ppservers=(), secret=None, **server_options):
        from . import Server
        if max_workers is not None and (max_workers < 0 or (max_workers == 0 and not ppservers)):
            raise ValueError("max_workers must be greater than 0 (0 only with ppservers)")
        ncpus = "autodetect" if max_workers is None else max_workers
        self._server = Server(ncpus, ppservers=ppservers, secret=secret, **server_options)
        rlock = threading.RLock()
        # this Executor's futures: one condition for all (see _JobFuture)
        self._Future = type("Future", (_JobFuture,), {
            "_condition": threading.Condition(rlock), "_rlock": rlock,
            "__module__": __name__, "__slots__": ()})
        # submit and its state are the C base's (pp._ppc._ExecutorCore): the
        # Server's submit, the Future class, the futures kept for shutdown
        # (done ones pruned now and then), the shutdown flag and the lock
        # making check, submit and keep one step. submit(fn, /, *args,
        # **kwargs) takes fn's globals along when fn is of __main__ and runs
        # keyword arguments through Chunk(fn, 2)
        self._setup(self._server.submit, self._Future)

    def map(self, fn, *iterables, timeout=None, chunksize=None, buffersize=None):
        """Results of fn over the iterables, in order, as an iterator; chunks
        sized from measured time when chunksize is None; at most buffersize
        items in flight when given. TimeoutError when a result is not there
        within timeout seconds of this call."""
        from . import _map
        if self._closed:
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
        pending = [f for f in self._close() if not f.done()]
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
