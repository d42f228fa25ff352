"""Progress display for map/imap/imap_unordered(progress=True) and
pp.progress(jobs): tqdm (tqdm.auto, so notebooks get their widget) when it
is installed, else one line on stderr rewritten in place. Counts items."""
import sys
import threading
import time


class _Line(object):
    """A single-line stderr display: done/total, rate, elapsed; redrawn at
    most 10 times a second."""

    def __init__(self, total=None, desc=None):
        self.total = total
        self.desc = desc
        self.n = 0
        self.t0 = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()
        self._draw(force=True)

    def update(self, k=1):
        with self.lock:
            self.n += k
            self._draw()

    def _draw(self, force=False, end=""):
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        el = now - self.t0
        rate = self.n / el if el > 0 else 0.0
        head = (self.desc + ": ") if self.desc else ""
        if self.total:
            pct = 100.0 * self.n / self.total
            text = "%s%3.0f%% %d/%d [%.1fs, %.0f it/s]" % (head, pct, self.n, self.total, el, rate)
        else:
            text = "%s%d [%.1fs, %.0f it/s]" % (head, self.n, el, rate)
        try:
            sys.stderr.write("\r" + text + end)
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def close(self):
        with self.lock:
            self._draw(force=True, end="\n")


def bar(total=None, desc=None):
    """An object with update(n) and close(): tqdm's when installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Line(total, desc)
    return tqdm(total=total, desc=desc)


def progress(jobs, desc=None):
    """Iterate over jobs (any collection of them) in their order while a
    progress bar counts them as they finish, in whatever order:
    ``for job in pp.progress(jobs): job()``."""
    jobs = list(jobs)
    b = bar(len(jobs), desc)
    lock = threading.Lock()
    left = [len(jobs)]

    def one(_job):
        with lock:
            b.update(1)
            left[0] -= 1

    for j in jobs:
        j.add_done_callback(one)
    from .futures import wait
    try:
        for j in jobs:
            wait([j])
            yield j
        deadline = time.monotonic() + 1.0
        while left[0] > 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # the last done callbacks are on their way
    finally:
        b.close()
