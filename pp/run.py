"""pp.run: start a ppc cluster from a launcher (srun, mpirun), no mpi4py.

    srun python -m pp.run script.py [args]
    mpirun -n N python -m pp.run script.py [args]

Every rank runs this module. Rank 0 runs script.py unchanged as __main__;
a plain ``pp.Server()`` there uses this machine's cores and every other
rank as a node. Every other rank is a node: it serves with the CPUs the
scheduler gave it and prints nothing (only rank 0's output reaches the
terminal).

Rendezvous without fixed ports or inbound ports on the nodes: rank 0 binds
two ephemeral ports (the nodes' engines dial the first, the second carries
the end of the job) and writes their addresses and a fresh random key to
``.ppc-run-<job id>`` in the working directory (mode 0600, removed once
every rank has come; PP_RUN_DIR names another folder). The other ranks read
it (only a file of their own user, private to it) and dial back. The
cluster secret is HMAC(key, job id): the job id comes from the launcher
(SLURM_JOB_ID.SLURM_STEP_ID, Open MPI's job id, or PP_RUN_JOBID), so ranks
of two jobs never authenticate each other, and no secret is on a command
line.

When the script ends, rank 0 tells every node its exit status (a message
authenticated with the secret) and each rank exits with it; a node whose
rank 0 vanishes exits with status 1. A rank that dies is a lost node: its
jobs run again elsewhere.

Environment: PP_RUN_ADDR (the address rank 0 binds and publishes; default
all interfaces, publishing this host's addresses), PP_RUN_NCPUS (workers
per rank), PP_RUN_TIMEOUT (seconds to wait for the other ranks, default
120), PP_RUN_JOBID, PP_RUN_DIR, PP_RUN_VERBOSE=1 (nodes keep their output).
"""
import hashlib
import hmac
import json
import os
import re
import select
import socket
import struct
import sys
import time

_MAGIC = "ppc-run-1"


def launcher_info(env=None):
    """(rank, size, job id or None, launcher name) from the launcher's
    environment; (0, 1, None, None) outside any launcher."""
    env = os.environ if env is None else env
    jobid = env.get("PP_RUN_JOBID")
    if "OMPI_COMM_WORLD_RANK" in env:
        job = env.get("OMPI_MCA_ess_base_jobid") or env.get("PMIX_NAMESPACE")
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                jobid or (job and "ompi-" + job), "Open MPI")
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        job = env.get("PMI_KVSNAME") or env.get("PMIX_NAMESPACE")
        return (int(env["PMI_RANK"]), int(env["PMI_SIZE"]), jobid or (job and "pmi-" + job),
                "PMI")
    if "PMIX_RANK" in env and "PMIX_SIZE" in env:
        job = env.get("PMIX_NAMESPACE")
        return (int(env["PMIX_RANK"]), int(env["PMIX_SIZE"]), jobid or (job and "pmix-" + job),
                "PMIx")
    # srun: a job step (SLURM_STEP_ID); a batch script's own shell is no rank
    if "SLURM_PROCID" in env and env.get("SLURM_STEP_ID") not in (None, "", "batch"):
        ntasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
        job = "%s.%s" % (env.get("SLURM_JOB_ID", ""), env["SLURM_STEP_ID"])
        return int(env["SLURM_PROCID"]), int(ntasks), jobid or "slurm-" + job, "Slurm"
    return 0, 1, jobid, None


def _tasks_here(spec, nodeid):
    """Tasks on node number nodeid from Slurm's "2(x3),1" notation."""
    i = 0
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return 1
        count, rep = int(m.group(1)), int(m.group(2) or 1)
        if nodeid < i + rep:
            return count
        i += rep
    return 1


def rank_ncpus(env=None):
    """Workers for this rank: what the scheduler gave it, else all cores."""
    env = os.environ if env is None else env
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    n = None
    try:
        if env.get("PP_RUN_NCPUS"):
            n = int(env["PP_RUN_NCPUS"])
        elif env.get("SLURM_CPUS_PER_TASK"):
            n = int(env["SLURM_CPUS_PER_TASK"])
        elif env.get("SLURM_CPUS_ON_NODE") and env.get("SLURM_STEP_ID"):
            here = _tasks_here(env.get("SLURM_STEP_TASKS_PER_NODE", "1"),
                               int(env.get("SLURM_NODEID", "0")))
            n = int(env["SLURM_CPUS_ON_NODE"]) // max(1, here)
        elif env.get("OMPI_COMM_WORLD_LOCAL_SIZE"):
            n = cores // max(1, int(env["OMPI_COMM_WORLD_LOCAL_SIZE"]))
        elif env.get("MPI_LOCALNRANKS"):
            n = cores // max(1, int(env["MPI_LOCALNRANKS"]))
    except ValueError:
        n = None
    return max(1, n if n is not None else cores)


def job_secret(key, jobid):
    """The cluster secret of one job: HMAC-SHA256(random key, job id)."""
    return hmac.new(key, b"ppc-run\0" + jobid.encode(), hashlib.sha256).hexdigest()


def _mac(secret, *parts):
    msg = "\0".join(str(p) for p in parts).encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def _rdv_path(jobid, env):
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", jobid)[:200]
    return os.path.join(env.get("PP_RUN_DIR") or os.getcwd(), ".ppc-run-" + safe)


def _host_addrs():
    """This host's IPv4 addresses, others before loopback."""
    import fcntl
    out = []
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        names = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                a = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
            except OSError:
                continue
            if a not in out:
                out.append(a)
    finally:
        s.close()
    out.sort(key=lambda a: a.startswith("127."))
    return out or ["127.0.0.1"]


def _write_private(path, data):
    """Write data to path, readable by this user only, replacing it whole."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_private(path):
    """The file's contents when it is this user's and private, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            sys.stderr.write("pp.run: ignoring %s: not private to this user\n" % path)
            return None
        return os.read(fd, 65536)
    finally:
        os.close(fd)


class _Fail(Exception):
    pass


def _rank0(script, args, jobid, size, ncpus, env):
    import pp
    bind = env.get("PP_RUN_ADDR") or ""
    addrs = [bind] if bind else _host_addrs()
    timeout = float(env.get("PP_RUN_TIMEOUT") or 120)
    rdv = socket.socket()
    ctl = socket.socket()
    path = None
    hellos = {}  # rank -> (socket, nonce)
    try:
        for s in (rdv, ctl):
            s.bind((bind, 0))
            s.listen(128)
        secret = None
        if size > 1:
            if not jobid:
                raise _Fail("cannot tell this job from others: the launcher sets no job id; "
                            "set PP_RUN_JOBID to a value unique to this job for every rank")
            key = os.urandom(32)
            secret = job_secret(key, jobid)
            path = _rdv_path(jobid, env)
            _write_private(path, json.dumps({
                "magic": _MAGIC, "addrs": addrs, "port": rdv.getsockname()[1],
                "ctl": ctl.getsockname()[1], "key": key.hex()}).encode())
            _gather(ctl, secret, size, hellos, time.monotonic() + timeout)
            if len(hellos) < size - 1:
                sys.stderr.write("pp.run: %d of %d other ranks came within %.0f s; going on "
                                 "without the others\n" % (len(hellos), size - 1, timeout))
            else:
                os.unlink(path)  # every rank has read it
                path = None
            pp._run_cluster = {"rendezvous": rdv.fileno(), "secret": secret, "ncpus": ncpus}
        else:
            pp._run_cluster = {"rendezvous": None, "secret": None, "ncpus": ncpus}
        code = _run_script(script, args)
        pp._destroy_at_exit()  # nodes see their client go before they hear the end
        pp._run_cluster = None
        if size > 1:
            _gather(ctl, secret, size, hellos, 0)  # late ranks, already waiting
            for rank, (conn, nonce) in hellos.items():
                try:
                    conn.sendall(("exit %d %s\n" % (code, _mac(secret, "exit", nonce, code)))
                                 .encode())
                except OSError:
                    pass
        return code
    finally:
        for conn, _ in hellos.values():
            conn.close()
        rdv.close()
        ctl.close()
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


def _read_line(sock, limit=300):
    """Bytes from sock up to and with a newline, at most limit of them (less
    if the peer closes first)."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        chunk = sock.recv(limit - len(line))
        if not chunk:
            break
        line += chunk
    return line


def _gather(ctl, secret, size, hellos, deadline):
    """Accept the other ranks' hellos on the control port until all came
    or the deadline passed (0: only those already waiting)."""
    while len(hellos) < size - 1:
        wait = max(0.0, deadline - time.monotonic()) if deadline else 0.0
        r, _, _ = select.select([ctl], [], [], wait)
        if not r:
            return
        conn, _ = ctl.accept()
        try:
            conn.settimeout(2)  # a rank sends its hello at once; a silent peer waits less
            line = _read_line(conn)
            word, rank, nonce, mac = line.decode("ascii").split()
            if word != "hello" or not hmac.compare_digest(mac, _mac(secret, "hello", rank,
                                                                    nonce)):
                raise ValueError("bad hello")
            conn.settimeout(None)
            old = hellos.pop(int(rank), None)
            if old:
                old[0].close()
            hellos[int(rank)] = (conn, nonce)
        except (OSError, ValueError, UnicodeDecodeError):
            conn.close()  # a stranger, or another job's rank


def _run_script(script, args):
    """Run script as __main__ as python would; its exit status."""
    import runpy
    import traceback
    sys.argv = [script] + list(args)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            sys.stderr.write("%s\n" % e.code)
            code = 1
    except BaseException as e:
        # as python prints it: the script's frames only, not ours or runpy's
        tb = e.__traceback__
        while tb and (tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__) or
                      tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")):
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        code = 130 if isinstance(e, KeyboardInterrupt) else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def _node(rank, jobid, ncpus, env):
    import pp
    if not jobid:
        raise _Fail("cannot tell this job from others: the launcher sets no job id; set "
                    "PP_RUN_JOBID to a value unique to this job for every rank")
    timeout = float(env.get("PP_RUN_TIMEOUT") or 120)
    path = _rdv_path(jobid, env)
    deadline = time.monotonic() + timeout
    info = None
    while info is None:
        raw = _read_private(path)
        if raw:
            try:
                info = json.loads(raw)
                if info.get("magic") != _MAGIC:
                    info = None
            except ValueError:
                info = None  # being written: read again
        if info is None:
            if time.monotonic() > deadline:
                raise _Fail("rank 0 published no rendezvous in %s within %.0f s"
                            % (path, timeout))
            time.sleep(0.05)
    secret = job_secret(bytes.fromhex(info["key"]), jobid)
    ctl = host = None
    errors = []
    for addr in info["addrs"]:
        try:
            ctl = socket.create_connection((addr, info["ctl"]), timeout=5)
            host = addr
            break
        except OSError as e:
            errors.append("%s: %s" % (addr, e))
    if ctl is None:
        raise _Fail("cannot reach rank 0 (%s)" % "; ".join(errors))
    nonce = os.urandom(16).hex()
    ctl.sendall(("hello %d %s %s\n" % (rank, nonce, _mac(secret, "hello", rank, nonce)))
                .encode())
    ctl.settimeout(None)
    if env.get("PP_RUN_VERBOSE") != "1":
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    server = pp.Server(ncpus=ncpus, secret=secret, _connect=(host, int(info["port"])))
    try:
        line = _read_line(ctl)
    finally:
        server.destroy()
        ctl.close()
    try:
        word, code, mac = line.decode("ascii").split()
        if word == "exit" and hmac.compare_digest(mac, _mac(secret, "exit", nonce, int(code))):
            return int(code)
    except (ValueError, UnicodeDecodeError):
        pass
    raise _Fail("rank 0 went away without saying how the job ended")


USAGE = "usage: python -m pp.run script.py [args]  (under srun or mpirun)\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE + __doc__.split("\n\n", 1)[1])
        return 0 if argv else 2
    env = os.environ
    try:
        rank, size, jobid, _ = launcher_info(env)
    except ValueError as e:
        sys.stderr.write("pp.run: bad launcher environment: %s\n" % e)
        return 2
    ncpus = rank_ncpus(env)
    err = os.dup(2)  # a node's own stderr goes quiet; its failure still shows
    try:
        if rank == 0:
            return _rank0(argv[0], argv[1:], jobid, size, ncpus, env)
        return _node(rank, jobid, ncpus, env)
    except (_Fail, OSError) as e:
        os.write(err, ("pp.run rank %d: %s\n" % (rank, e)).encode())
        return 1
    except Exception as e:  # a node's stderr is quiet: say it on the real one
        os.write(err, ("pp.run rank %d: %s: %s\n" % (rank, type(e).__name__, e)).encode())
        return 1
    finally:
        os.close(err)


if __name__ == "__main__":
    sys.exit(main())
