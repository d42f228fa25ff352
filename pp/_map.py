"""Server.map, Server.imap and Server.imap_unordered: a function over
iterables in chunks, each chunk one job.

A chunk is a ``pp._ppc.Chunk`` (its loop over the items is C, in the
worker), shipped as the function is (lambdas, closures, __main__
functions). With chunksize=None the size follows the measured execution
time per item so that a chunk runs about TARGET_S seconds, bounded so
that every worker gets several chunks of a known-length input. Inputs are
read lazily: at most about two chunks per worker are in flight, so an
endless iterator streams with flat memory. Closing an iterator early (or
dropping it) cancels the queued chunks and kills the running ones:
nothing is left running.
"""
import collections
import itertools
import math
import operator

from . import _ppc

TARGET_S = 0.01     # aim for chunks of about this much work
MIN_S = 0.001       # the last chunks of a known-length input: not below this
FIRST_CHUNK = 16    # items per chunk before anything was measured
MAX_CHUNK = 1 << 16  # most items in one chunk when the length is unknown


def _workers(server):
    n = server.get_ncpus()
    try:
        n += sum(server.get_active_nodes().values()) - server.get_ncpus()
    except Exception:  # get_active_nodes counts local ones too in pp's format
        pass
    return max(1, n)


class _Sizer(object):
    """Chooses the next chunk's size from measured time per item: about
    TARGET_S of work, and, for an input of known length, guided toward the
    end (at most a quarter of a worker's share of what is left, down to
    about MIN_S of work), so the last chunks finish together."""

    def __init__(self, chunksize, total, nworkers):
        self.fixed = chunksize
        self.total = total
        self.nworkers = nworkers
        self.sent = 0
        self.cap = MAX_CHUNK
        if total:
            self.cap = max(1, min(MAX_CHUNK, math.ceil(total / (4.0 * nworkers))))
        self.size = min(FIRST_CHUNK, self.cap)
        self.floor = 1

    def next(self):
        if self.fixed:
            return self.fixed
        size = self.size
        if self.total:
            left = self.total - self.sent
            size = min(size, max(self.floor, math.ceil(left / (4.0 * self.nworkers))))
        return size

    def sent_items(self, n):
        self.sent += n

    def measured(self, job, n):
        if self.fixed:
            return
        t = job.exec_time
        if t is None or n <= 0:
            return
        per = max(t / n, 1e-8)
        self.size = int(max(1, min(self.cap, TARGET_S / per)))
        self.floor = int(max(1, min(self.size, MIN_S / per)))


def _items(iterables):
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    if len(iterables) == 1:
        if type(iterables[0]) is range:
            return iterables[0], False  # sliced, not iterated (_run)
        return iter(iterables[0]), False
    return zip(*iterables), True


def _total(iterables):
    try:
        return min(operator.length_hint(it, -1) if hasattr(it, "__len__") else -1
                   for it in iterables) if all(hasattr(it, "__len__") for it in iterables) else None
    except TypeError:
        return None


def _stop(pending):
    """Nothing left running: queued chunks cancelled, running ones killed."""
    for job, _n in pending:
        if not job.cancel():
            job.kill()
    for job, _n in pending:
        try:
            job.exception()
        except BaseException:  # CancelledError: what we asked for
            pass


def imap(server, func, *iterables, **kw):
    """Results one by one (Server.imap, imap_unordered, Executor.map)."""
    return _flat(chunks(server, func, *iterables, **kw))


def _flat(gen):
    try:
        for res in gen:
            yield from res
    finally:
        gen.close()  # at once, not when the collector gets to it


def chunks(server, func, *iterables, depfuncs=(), modules=(), chunksize=None, progress=False,
           ordered=True, deadline=None, max_items=None, globals=None):
    """The result lists of the chunks, in order (or as completed), behind
    Server.map/imap/imap_unordered and Executor.map.
    deadline: time.monotonic() by which each result must be there
    (concurrent.futures.TimeoutError otherwise); max_items: most items in
    flight; globals: as submit's (the function's top-level imports)."""
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError("chunksize must be a positive int or None")
    it, star = _items(iterables)
    total = _total(iterables)
    nworkers = _workers(server)
    chunk = _ppc.Chunk(func, star)
    sizer = _Sizer(chunksize, total, nworkers)
    depfuncs = tuple(depfuncs)
    modules = tuple(modules)
    bar = None
    if progress:
        from ._progress import bar as make_bar
        bar = make_bar(total)
    if max_items is not None and sizer.fixed is None:
        sizer.cap = max(1, min(sizer.cap, max_items))
        sizer.size = min(sizer.size, sizer.cap)
    return _run(server, chunk, it, sizer, depfuncs, modules, nworkers, bar, ordered, deadline,
                max_items, globals)


def _run(server, chunk, it, sizer, depfuncs, modules, nworkers, bar, ordered, deadline,
         max_items, globals):
    max_chunks = 2 * nworkers + 1
    inflight = 0
    rng = it if type(it) is range else None
    pos = 0
    pending = collections.deque()
    exhausted = False
    islice = itertools.islice
    submit = server.submit
    if not ordered:
        import queue
        doneq = queue.SimpleQueue()
        put = doneq.put
    try:
        while True:
            while not exhausted and len(pending) < max_chunks:
                want = sizer.next()
                if max_items is not None:
                    want = min(want, max_items - inflight)
                    if want <= 0:
                        break
                if rng is not None:  # a range travels as a range: a few bytes a chunk
                    items = rng[pos:pos + want]
                    pos += len(items)
                else:
                    items = list(islice(it, want))
                if not items:
                    exhausted = True
                    break
                job = submit(chunk, (items,), depfuncs, modules, globals=globals)
                inflight += len(items)
                sizer.sent_items(len(items))
                if not ordered:
                    job.add_done_callback(put)
                pending.append((job, len(items)))
            if not pending:
                return
            if ordered:
                job, n = pending.popleft()
            else:
                job = doneq.get()
                for k, (j, n) in enumerate(pending):
                    if j is job:
                        del pending[k]
                        break
            try:
                if deadline is None:
                    res = job.result()
                else:
                    import time
                    res = job.result(timeout=max(0.0, deadline - time.monotonic()))
            except BaseException:
                pending.appendleft((job, n))  # stopped below if still running
                raise
            inflight -= n
            sizer.measured(job, n)
            if bar is not None:
                bar.update(n)
            yield res
    finally:
        if pending:
            _stop(pending)
        if bar is not None:
            bar.close()


def map(server, func, *iterables, **kw):
    out = []
    gen = chunks(server, func, *iterables, **kw)
    try:
        for res in gen:  # chunk by chunk: no generator step per item
            out.extend(res)
    finally:
        gen.close()
    return out
