"""pp.slurm: nodes from a Slurm cluster for a client on a login node.

    from pp.slurm import SlurmCluster
    with SlurmCluster(nodes=4, cpus_per_node=8, partition="short",
                      time="1:00:00") as cluster:
        job_server = cluster.server()      # a pp.Server using the nodes
        ...

Each node is a batch job (sbatch) running ``ppserver --connect``: it dials
back to a port this client opened, so the nodes need no inbound port and
no ppserver is started by hand. The secret is fresh and random for each
cluster and reaches the jobs through their environment (PP_SECRET), never a
command line. ``scale(n)`` submits or cancels node jobs; ``close()`` (also
at interpreter exit) cancels them all with scancel. ``wait(n)`` raises
SlurmPendingError, with Slurm's reasons, when jobs stay pending past the
deadline.

Command line (runs script.py with a plain ``pp.Server()`` using the nodes):

    python -m pp.slurm --nodes 4 --cpus-per-node 8 [--partition P] [--time T]
                       [--sbatch=ARG ...] [--host ADDR] [--local-cpus N]
                       script.py [args]
"""
import atexit
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import weakref

__all__ = ["SlurmCluster", "SlurmError", "SlurmPendingError"]


class SlurmError(RuntimeError):
    """An sbatch, squeue or scancel command failed."""


class SlurmPendingError(SlurmError, TimeoutError):
    """Node jobs stayed pending (or were lost) past the deadline."""


_live = weakref.WeakSet()


def _close_all():
    for c in list(_live):
        c.close()


atexit.register(_close_all)


def _run(cmd, env=None):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           universal_newlines=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError("%s not found: is Slurm installed here?" % cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise SlurmError("%s did not answer within 60 s" % cmd[0]) from None
    if p.returncode != 0:
        raise SlurmError("%s failed (status %d): %s" % (" ".join(cmd[:2]), p.returncode,
                                                        p.stderr.strip()))
    return p.stdout


class SlurmCluster(object):
    """Node jobs submitted with sbatch that connect back to this client.

    nodes: node jobs to start now (scale() changes it later).
    cpus_per_node: workers per node (--cpus-per-task); None: what Slurm gives.
    partition, time: sbatch's --partition and --time (None: the defaults).
    extra_sbatch: further sbatch arguments, e.g. ["--account=abc", "--mem=4G"].
    host: the address nodes dial to reach this client (default: this host's
    name; PP_SLURM_HOST overrides it). A numeric address is also the only
    one listened on.
    python: the interpreter the nodes run (default: this one).
    pending_timeout: seconds wait() allows node jobs to stay pending.
    log_dir: where node jobs write their logs (default: nowhere).
    idle_timeout: a node job ends once this client has been unreachable
    that long (it was killed before it could cancel its jobs).
    """

    def __init__(self, nodes=0, cpus_per_node=None, partition=None, time=None,
                 extra_sbatch=(), host=None, python=None, pending_timeout=300.0,
                 log_dir=None, job_name="ppc-node", idle_timeout=300.0):
        self.cpus_per_node = cpus_per_node
        self.partition = partition
        self.time = time
        self.extra_sbatch = list(extra_sbatch)
        self.python = python or sys.executable
        self.pending_timeout = pending_timeout
        self.log_dir = log_dir
        self.job_name = job_name
        self.idle_timeout = idle_timeout
        self.secret = secrets.token_hex(32)
        self.jobs = []  # Slurm job ids of our nodes, oldest first
        self._closed = False
        self.host = host or os.environ.get("PP_SLURM_HOST") or socket.gethostname()
        try:
            socket.inet_pton(socket.AF_INET, self.host)
            bind = self.host
        except OSError:
            bind = ""
        self._sock = socket.socket()
        self._sock.bind((bind, 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        _live.add(self)
        if nodes:
            self.scale(nodes)

    # -- jobs --------------------------------------------------------------
    def _sbatch_args(self):
        args = ["sbatch", "--parsable", "--job-name=" + self.job_name, "--nodes=1",
                "--ntasks=1", "--export=ALL"]
        if self.cpus_per_node:
            args.append("--cpus-per-task=%d" % self.cpus_per_node)
        if self.partition:
            args.append("--partition=" + self.partition)
        if self.time:
            args.append("--time=" + str(self.time))
        if self.log_dir:
            args.append("--output=" + os.path.join(self.log_dir, "ppc-node-%j.log"))
        else:
            args.append("--output=/dev/null")
        return args + self.extra_sbatch

    def job_script(self):
        """The batch script each node job runs."""
        workers = (str(self.cpus_per_node) if self.cpus_per_node
                   else "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}")
        return ("#!/bin/sh\n# a ppc node dialing back to its client\n"
                "exec %s -m pp.ppserver --connect %s:%d -w %s -t %g\n"
                % (shlex.quote(self.python), self.host, self.port, workers,
                   self.idle_timeout))

    def scale(self, n):
        """Have n node jobs: submit more, or cancel the newest."""
        self._check()
        n = max(0, int(n))
        env = dict(os.environ, PP_SECRET=self.secret)
        while len(self.jobs) < n:
            self.jobs.append(self._submit(env))
        if len(self.jobs) > n:
            extra = self.jobs[n:]
            del self.jobs[n:]
            _run(["scancel"] + extra)

    def _submit(self, env):
        try:
            p = subprocess.run(self._sbatch_args(), input=self.job_script(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               universal_newlines=True, timeout=60)
        except FileNotFoundError:
            raise SlurmError("sbatch not found: is Slurm installed here?") from None
        if p.returncode != 0:
            raise SlurmError("sbatch failed (status %d): %s" % (p.returncode, p.stderr.strip()))
        return p.stdout.strip().split(";")[0]

    @property
    def nodes(self):
        """{job id: Slurm state} of the node jobs (RUNNING, PENDING, ...)."""
        if not self.jobs:
            return {}
        out = _run(["squeue", "-h", "-j", ",".join(self.jobs), "-o", "%i %T %r"])
        states = {}
        for line in out.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
        return {j: states.get(j, "GONE") for j in self.jobs}

    def wait(self, n=None, timeout=None):
        """Wait until n node jobs (default: all) run; SlurmPendingError
        with Slurm's reasons past timeout (default pending_timeout)."""
        self._check()
        n = len(self.jobs) if n is None else n
        deadline = time.monotonic() + (self.pending_timeout if timeout is None else timeout)
        while True:
            if not self.jobs and n:
                raise SlurmError("no node jobs: call scale(n) first")
            out = _run(["squeue", "-h", "-j", ",".join(self.jobs), "-o", "%i %T %r"])
            rows = [line.split(None, 2) for line in out.splitlines() if line.strip()]
            running = sum(1 for r in rows if len(r) > 1 and r[1] == "RUNNING")
            if running >= n:
                return running
            if time.monotonic() > deadline:
                why = "; ".join("job %s %s (%s)" % (r[0], r[1], r[2] if len(r) > 2 else "")
                                for r in rows if r[1] != "RUNNING") or "jobs ended"
                raise SlurmPendingError(
                    "%d of %d node jobs running after %.0f s: %s" %
                    (running, n, self.pending_timeout if timeout is None else timeout, why))
            time.sleep(0.2)

    # -- use ---------------------------------------------------------------
    def server_options(self):
        """Keyword arguments making a pp.Server use these nodes."""
        self._check()
        return {"secret": self.secret, "_rendezvous": self._sock.fileno()}

    def server(self, ncpus=0, **kw):
        """A pp.Server whose nodes are this cluster's jobs (ncpus local
        workers too; 0 by default: a login node is not for computing)."""
        import pp
        kw.update(self.server_options())
        return pp.Server(ncpus=ncpus, **kw)

    def close(self):
        """Cancel every node job (scancel) and close the client's port."""
        if self._closed:
            return
        self._closed = True
        jobs, self.jobs = self.jobs, []
        if jobs:
            try:
                _run(["scancel"] + jobs)
            except SlurmError as e:
                sys.stderr.write("pp.slurm: %s\n" % e)
        self._sock.close()
        _live.discard(self)

    def _check(self):
        if self._closed:
            raise SlurmError("the cluster is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "SlurmCluster(%d node jobs, dialing %s:%d)" % (len(self.jobs), self.host,
                                                                self.port)


USAGE = __doc__[__doc__.index("Command line"):]


def main(argv=None):
    import getopt
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, args = getopt.getopt(argv, "h", ["nodes=", "cpus-per-node=", "partition=",
                                               "time=", "sbatch=", "host=", "local-cpus=",
                                               "pending-timeout=", "log-dir=", "help"])
    except getopt.GetoptError as e:
        sys.stderr.write("pp.slurm: %s\n%s" % (e, USAGE))
        return 2
    kw = {"nodes": 1, "extra_sbatch": []}
    local = 0
    for o, a in opts:
        if o in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if o == "--nodes":
            kw["nodes"] = int(a)
        elif o == "--cpus-per-node":
            kw["cpus_per_node"] = int(a)
        elif o == "--partition":
            kw["partition"] = a
        elif o == "--time":
            kw["time"] = a
        elif o == "--sbatch":
            kw["extra_sbatch"].append(a)
        elif o == "--host":
            kw["host"] = a
        elif o == "--local-cpus":
            local = int(a)
        elif o == "--pending-timeout":
            kw["pending_timeout"] = float(a)
        elif o == "--log-dir":
            kw["log_dir"] = a
    if not args:
        sys.stderr.write("pp.slurm: no script given\n" + USAGE)
        return 2
    import pp
    from pp.run import _run_script
    try:
        with SlurmCluster(**kw) as cluster:
            cluster.wait()
            pp._run_cluster = {"rendezvous": cluster.server_options()["_rendezvous"],
                               "secret": cluster.secret, "ncpus": local}
            try:
                return _run_script(args[0], args[1:])
            finally:
                pp._destroy_at_exit()
                pp._run_cluster = None
    except SlurmError as e:
        sys.stderr.write("pp.slurm: %s\n" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
