"""Parallel Python with its engine in C.

`import pp` gives the API of Parallel Python 1.6 / ppft: ``pp.Server``,
``submit``, jobs called for their result, ``wait``, callbacks, ``Template``,
``get_ncpus``/``set_ncpus``, ``get_active_nodes``, ``get_stats``,
``print_stats``, ``destroy`` and ``DestroyedServerError``. The scheduler,
queues, pipes, worker loop and statistics are C (module ``pp._ppc``); this
file only names things and formats the statistics table.

Importing pp is kept cheap: modules that only some calls need (logging, ast,
weakref, pickle) are imported by those calls, not here. The ``pp`` logger
(``pp.logger``, or ``logging.getLogger("pp")``) is the one a Server logs to.
"""
import atexit
import os
import sys
import time

from . import _ppc
from ._ppc import DestroyedServerError, RemoteError, RemoteTraceback, WorkerError

__version__ = "1.7.0"  # the one version string (pyproject.toml reads it)
version = __version__
__all__ = ["Server", "Template", "DestroyedServerError", "WorkerError", "RemoteError",
           "RemoteTraceback", "version", "__version__"]



# names of modules imported on first use (`import pp` stays cheap)
_LAZY = {"wait": "futures", "as_completed": "futures", "FIRST_COMPLETED": "futures",
         "FIRST_EXCEPTION": "futures", "ALL_COMPLETED": "futures",
         "TimeoutError": "futures", "CancelledError": "futures", "Executor": "executor",
         "progress": "_progress"}


def __getattr__(name):
    # pp.logger, made on first use so that `import pp` does not import logging
    if name == "logger":
        import logging
        return logging.getLogger("pp")
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class Statistics(object):
    """Per-node statistics: ncpus, njobs and the total job time in seconds."""

    def __init__(self, ncpus, njobs=0, time=0.0):
        self.ncpus = ncpus
        self.njobs = njobs
        self.time = time

    def __repr__(self):
        return "Statistics(ncpus=%r, njobs=%r, time=%r)" % (self.ncpus, self.njobs, self.time)


def _user_secret():
    """The secret from PP_SECRET, or pp's classic pp_secret in ~/.pythonrc.py."""
    env = os.environ.get("PP_SECRET")
    if env:
        return env
    import ast
    rc = os.path.expanduser("~/.pythonrc.py")
    try:
        with open(rc) as f:
            tree = ast.parse(f.read(), rc)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pp_secret" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return value if isinstance(value, (str, bytes)) else None
    return None


MIN_SECRET_LEN = 16


def read_secret_file(path):
    """The secret in a file: its first line, surrounding blanks stripped.
    The file should be readable by its owner only (a warning otherwise)."""
    path = os.path.expanduser(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read(65536)
    secret = data.split(b"\n", 1)[0].strip()
    if not secret:
        raise ValueError("secret file %s is empty" % path)
    if st.st_mode & 0o077:
        import logging as _logging
        _logging.getLogger("pp").warning(
            "secret file %s can be read by other users (mode %o): chmod 600 it", path,
            st.st_mode & 0o777)
    try:
        return secret.decode()
    except UnicodeDecodeError:
        return secret


def new_secret():
    """A strong random secret: 32 random bytes, URL-safe base64 (43 characters)."""
    import base64
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


_live_servers = None  # a WeakSet of Servers, made with the first one
# Set by pp.run on rank 0 (pp/run.py): {"rendezvous": fd or None, "secret",
# "ncpus"}. A Server made without ppservers or node options then takes the
# job's CPU count and every rank that dials the rendezvous socket as a node.
_run_cluster = None


def _destroy_at_exit():
    for server in list(_live_servers or ()):
        server.destroy()


class Server(_ppc.Server):
    """Parallel Python job server.

    Server(ncpus="autodetect", ppservers=(), secret=None, restart=False,
           proto=pickle.HIGHEST_PROTOCOL, socket_timeout=3600,
           raise_exceptions=True)

    ncpus: local worker processes ("autodetect": one per available core);
    0 runs jobs on remote nodes only. The first ones are forks of this
    process when it is single-threaded, the others fresh interpreters
    (PPC_START=spawn in the environment: all fresh interpreters).
    ppservers: remote nodes, "host", "host:port" (default port 60000), or
    "*" to use the nodes that announce themselves on the network ("*:port":
    only on that port, "192.168.1.*[:port]": only from that subnet); they
    are heard for 5 s from start and after each rescan().
    secret: the cluster's shared secret (str or bytes); when None, the
    PP_SECRET environment variable or pp_secret in ~/.pythonrc.py. Remote
    nodes cannot be used without one (or certificates). Every connection
    to a node is TLS 1.3 keyed by it (README "Security").
    secret_file: read the secret from this file instead (its first line).
    certfile, keyfile, cafile: PEM files for TLS with certificates instead
    of a secret: this side's certificate and key, and the CA that signed
    the nodes' certificates (the nodes check ours against theirs).
    socket_timeout: seconds a remote node may stay silent (no heartbeat)
    before it is declared lost; jobs themselves may run longer.
    restart: start a fresh worker process for every job.
    proto: pickle protocol for arguments and results.
    raise_exceptions: when True (default) job() re-raises an exception of the
    job with its own type, the worker's traceback attached as __cause__;
    when False, pp's old behaviour: the traceback is printed and job()
    returns None.
    status_port: serve a live status page, /status (JSON), /metrics
    (Prometheus) and /health on this port (0: a free one; see status_url),
    from the engine's own thread. status_host: the address (default
    127.0.0.1); any other needs the secret as "Authorization: Bearer ...".
    """

    default_port = 60000
    default_secret = None

    def __init__(self, ncpus="autodetect", ppservers=(), secret=None, restart=False,
                 proto=_ppc.HIGHEST_PROTOCOL, socket_timeout=3600, raise_exceptions=True,
                 secret_file=None, certfile=None, keyfile=None, cafile=None,
                 status_port=None, status_host=None, **node_options):
        global _live_servers
        # Debug lines only where logging is in use: a program that never
        # imported logging has no handler that could show them, and importing
        # it would be most of a new Server's cost. Messages that matter
        # (warnings, errors) import it when they come (src/py/server.c).
        logging = sys.modules.get("logging")
        logger = logging.getLogger("pp") if logging else None
        if logger:
            logger.debug("Creating server instance (pp-%s)", __version__)
        if _run_cluster and not ppservers and not node_options:  # under pp.run
            if ncpus == "autodetect":
                ncpus = _run_cluster["ncpus"]
            if _run_cluster["rendezvous"] is not None:
                node_options = {"_rendezvous": _run_cluster["rendezvous"]}
                secret = _run_cluster["secret"]
        networked = bool(ppservers or node_options.get("_listen") or
                         node_options.get("_rendezvous") is not None or node_options.get("_connect"))
        if secret_file is not None:
            if secret is not None:
                raise ValueError("give secret or secret_file, not both")
            secret = read_secret_file(secret_file)
        if secret is None and networked and certfile is None:
            secret = _user_secret()
        if networked and certfile is None and isinstance(secret, (str, bytes)) and \
                0 < len(secret) < MIN_SECRET_LEN:
            import logging as _logging
            _logging.getLogger("pp").warning(
                "the secret is short (%d characters): a captured connection lets an attacker "
                "try guesses offline; use at least %d random characters (ppserver --new-secret "
                "makes one)", len(secret), MIN_SECRET_LEN)
        if certfile is not None or keyfile is not None or cafile is not None:
            node_options.update(_certfile=certfile, _keyfile=keyfile, _cafile=cafile)
        if status_port is not None:
            if status_host not in (None, "", "127.0.0.1", "localhost", "::1") and secret is None:
                secret = _user_secret()
            from ._statusassets import assets
            node_options["_status"] = (status_host, status_port, assets())
        self._status_host = status_host
        _ppc.Server.__init__(self, ncpus, ppservers, secret, restart, proto, socket_timeout,
                             raise_exceptions, **node_options)
        if _live_servers is None:
            from _weakrefset import WeakSet  # weakref.WeakSet, without weakref's import cost
            _live_servers = WeakSet()
            atexit.register(_destroy_at_exit)
        _live_servers.add(self)
        if logger:
            logger.debug("pp local server started with %d workers", self.get_ncpus())

    @property
    def status_url(self):
        """The status page's address ("http://127.0.0.1:PORT/"), or None."""
        port = self._status_port()
        if not port:
            return None
        host = self._status_host or "127.0.0.1"
        if ":" in host:
            host = "[%s]" % host
        return "http://%s:%d/" % (host, port)

    def get_stats(self):
        """Node name -> Statistics (ncpus, njobs, time)."""
        return {name: Statistics(*vals) for name, vals in self._stats().items()}

    def print_stats(self):
        """Print job execution statistics in pp's format."""
        print("Job execution statistics:")
        walltime = time.time() - self._created
        statistics = list(self.get_stats().items())
        totaljobs = sum(stat.njobs for _, stat in statistics)
        print(" job count | % of all jobs | job time sum | time per job | job server")
        for ppserver, stat in statistics:
            if stat.njobs:
                print("    %6i |        %6.2f |     %8.4f |  %11.6f | %s"
                      % (stat.njobs, 100.0 * stat.njobs / totaljobs, stat.time,
                         stat.time / stat.njobs, ppserver))
        print("Time elapsed since server creation %s" % walltime)
        print("%s active tasks, %s cores" % (self._active_tasks(), self.get_ncpus()))
        print("")

    def map(self, func, *iterables, depfuncs=(), modules=(), chunksize=None, progress=False):
        """[func(*items) for items in zip(*iterables)], in chunks on the workers
        (chunksize None: chosen from measured time per item). The first
        exception a chunk raises is raised here."""
        from . import _map
        return _map.map(self, func, *iterables, depfuncs=depfuncs, modules=modules,
                        chunksize=chunksize, progress=progress)

    def imap(self, func, *iterables, depfuncs=(), modules=(), chunksize=None, progress=False):
        """Lazy map: an iterator of results in order; inputs read as needed,
        a bounded number in flight. Closing it early stops its jobs."""
        from . import _map
        return _map.imap(self, func, *iterables, depfuncs=depfuncs, modules=modules,
                         chunksize=chunksize, progress=progress)

    def imap_unordered(self, func, *iterables, depfuncs=(), modules=(), chunksize=None,
                       progress=False):
        """As imap, results in the order their chunks complete."""
        from . import _map
        return _map.imap(self, func, *iterables, depfuncs=depfuncs, modules=modules,
                         chunksize=chunksize, progress=progress, ordered=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False


class Template(object):
    """Template(job_server, func, depfuncs=(), modules=(), callback=None,
    callbackargs=(), group="default", globals=None): submit the same function
    with the same settings many times, as template.submit(*args)."""

    def __init__(self, job_server, func, depfuncs=(), modules=(), callback=None,
                 callbackargs=(), group="default", globals=None):
        self.job_server = job_server
        self.func = func
        self.depfuncs = depfuncs
        self.modules = modules
        self.callback = callback
        self.callbackargs = callbackargs
        self.group = group
        self.globals = globals

    def submit(self, *args):
        """Submit func(*args) with the template's settings; returns the job."""
        return self.job_server.submit(self.func, args, self.depfuncs, self.modules,
                                      self.callback, self.callbackargs, self.group,
                                      self.globals)
