"""joblib backend "pp": ``import pp.joblib`` registers it, then

    with joblib.parallel_backend("pp", n_jobs=4):
        ...  # joblib.Parallel, scikit-learn's n_jobs

runs on ppc's workers, and on ppservers given as
``joblib.parallel_backend("pp", n_jobs=8, ppservers=("host:port",),
secret=..., ncpus=0)`` (ncpus: local workers; by default n_jobs, at most
the cores). A batch of joblib calls is one job; batches are pickled as
args (numpy data out of band), with cloudpickle (standalone or joblib's
copy, where installed) for batches the pickle module cannot handle
(lambdas, closures). Servers are
kept per (workers, ppservers, secret) and reused by later calls.
"""
import threading

import joblib
from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend,
                                       ParallelBackendBase, SequentialBackend)

_servers = {}
_lock = threading.Lock()


def _call(batch):
    return batch()


def _cloudpickle():
    """cloudpickle, standalone or joblib's copy; None when neither exists."""
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:
        pass
    try:
        from joblib.externals import cloudpickle
        return cloudpickle
    except ImportError:
        return None


def _call_pickled(blob):
    return _cloudpickle().loads(blob)()


def _server(ncpus, ppservers, secret, options):
    from . import Server
    key = (ncpus, tuple(ppservers), secret, tuple(sorted(options.items())))
    with _lock:
        s = _servers.get(key)
        if s is None or s._destroyed:
            s = Server(ncpus, ppservers=tuple(ppservers), secret=secret, **options)
            _servers[key] = s
        return s


class PPBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend over a pp Server."""

    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, nesting_level=None, inner_max_num_threads=None, ppservers=(),
                 secret=None, ncpus=None, **server_options):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        self.ncpus = ncpus  # local workers (None: n_jobs, at most the cores; 0: nodes only)
        self.ppservers = tuple(ppservers)
        self.secret = secret
        self.server_options = server_options
        self.server = None
        self.jobs = set()

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            n_jobs = max(joblib.cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        n = self.effective_n_jobs(n_jobs)
        if n == 1 and not self.ppservers:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        ncpus = self.ncpus if self.ncpus is not None else min(n, joblib.cpu_count())
        self.server = _server(ncpus, self.ppservers, self.secret, self.server_options)
        self.parallel = parallel
        return n

    def submit(self, func, callback=None):
        try:
            job = self.server.submit(_call, (func,))
        except Exception:  # not picklable by pickle: cloudpickle can, if installed
            cp = _cloudpickle()
            if cp is None:
                raise
            job = self.server.submit(_call_pickled, (cp.dumps(func),))
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)
        if callback is not None:
            job.add_done_callback(callback)
        return job

    def retrieve_result_callback(self, job):
        return job.result()

    def terminate(self):
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready=True):
        for job in list(self.jobs):
            if not job.cancel():
                job.kill()
        self.jobs.clear()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def get_nested_backend(self):
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


joblib.register_parallel_backend("pp", PPBackend)
