# bench/cases/common.py - helpers shared by the benchmark case scripts:
# argument parsing, the one-JSON-line result protocol, a hard watchdog,
# /proc scanning (RSS, descendants), clean-up of every child a case made,
# and starting a node process on 127.0.0.1 (a free port, its pid file, waiting
# for it to listen).
# Nothing here is shipped to workers; job functions live in the case scripts.
import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
PHASE = ["start"]          # what the case is doing now (reported on timeout)
_OUT_LOCK = threading.Lock()
_DONE = [False]


def parse_args(extra=None):
    """--impl and --case for every script, plus the script's own options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", required=True,
                    choices=["serial", "mp", "ppe", "ppft", "ppc", "ppc_novm", "ppc_plain", "ray",
                             "bare", "limit", "limit_novm", "mpi4py"])
    ap.add_argument("--case", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0)
    if extra:
        extra(ap)
    return ap.parse_args()


def emit(obj):
    """Print the single JSON result line (once)."""
    with _OUT_LOCK:
        if _DONE[0]:
            return
        _DONE[0] = True
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def finish(result, rc=0):
    """Emit the result, kill every process this case started, exit at once.

    os._exit skips pool/server destructors, which may block (ppft's destroy
    waits on workers, a Pool with pending tasks joins its threads)."""
    emit(result)
    kill_descendants()
    sys.stderr.flush()
    os._exit(rc)


def start_watchdog(args, base):
    """Hard limit a little under the driver's: emit an error naming the phase."""
    limit = max(5.0, args.timeout - 5.0)

    def fire(signum=None, frame=None):
        r = dict(base)
        r["error"] = "timeout after %.0f s in phase %r" % (limit, PHASE[0])
        finish(r, 3)

    # a signal, not a timer thread: the measured process stays single-threaded
    # as a user's script is (ppc forks its first workers only then)
    import signal
    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, limit)


def run(main, args, **base):
    """Run main(args) -> dict of measurements; any exception becomes an
    'error' result. base (case, impl, ...) is merged into every result."""
    base = dict(case=args.case, impl=args.impl, **base)
    start_watchdog(args, base)
    try:
        res = main(args)
    except BaseException as e:  # noqa: BLE001 - report everything, never hang
        import traceback
        traceback.print_exc()
        r = dict(base)
        r["error"] = "%s: %s (phase %s)" % (type(e).__name__,
                                            str(e).splitlines()[0][:200] if str(e) else "",
                                            PHASE[0])
        finish(r, 1)
    r = dict(base)
    r.update(res)
    finish(r, 0)


# ---------------------------------------------------------------- pp import

def import_pp(impl):
    """Import the pp package of this interpreter and check it is the one the
    column claims: ppft's shim in bench/.venv-ppft, our package otherwise."""
    PHASE[0] = "import pp"
    import pp
    is_ppft = "ppft" in sys.modules or "ppft" in (getattr(pp, "__file__", "") or "")
    if impl == "ppft" and not is_ppft:
        raise RuntimeError("ppft column but pp is not ppft: %s" % pp.__file__)
    if impl in ("ppc", "ppc_novm") and is_ppft:
        raise RuntimeError("ppc column imported ppft's pp (%s)" % pp.__file__)
    return pp


def pp_info(pp):
    return {"pp_file": getattr(pp, "__file__", None),
            "pp_version": str(getattr(pp, "__version__", getattr(pp, "version", "?")))}


# ---------------------------------------------------------------- /proc

def rss_self():
    """Resident bytes of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def vmrss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ppid_map():
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
            # field 4 (ppid) follows the ')' that closes the command name
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        m[int(d)] = ppid
    return m


def descendants(pid=None):
    """Every live descendant of pid (default: this process), found by
    scanning /proc/*/stat parent links (no psutil)."""
    pid = os.getpid() if pid is None else pid
    m = _ppid_map()
    kids = {}
    for p, pp_ in m.items():
        kids.setdefault(pp_, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_descendants():
    for p in descendants():
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------- misc

def ncpus():
    return os.cpu_count() or 1


def now():
    return time.perf_counter()



def time_tiny(server, tiny, n):
    """Seconds for n jobs tiny(i), i in range(n), one submit each, through
    server, every result taken; tiny is the case's x + 1 (results checked)."""
    t0 = now()
    jobs = [server.submit(tiny, (i,)) for i in range(n)]
    res = [j() for j in jobs]
    t = now() - t0
    if res != [i + 1 for i in range(n)]:
        raise RuntimeError("wrong results")
    return t


# ---------------------------------------------------------------- nodes

def free_port():
    """A TCP port free on 127.0.0.1 now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def register_node(proc):
    """Name a node process the case started in the driver's pid directory
    (BENCH_PIDDIR), so the driver kills it even if this case cannot."""
    piddir = os.environ.get("BENCH_PIDDIR")
    if piddir:
        with open(os.path.join(piddir, "ppserver.%d" % proc.pid), "w") as f:
            f.write("%d\n" % proc.pid)


def wait_port(port, proc, limit):
    """None once 127.0.0.1:port accepts connections, else why not (proc
    exited, or nothing listening after limit seconds)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            return "exited with %s" % proc.returncode
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return None
        except OSError:
            time.sleep(0.05)
    return "not listening after %.0f s" % limit
