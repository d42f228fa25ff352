# bench/driver.py - orchestrates the benchmark (make bench / bench/run.sh):
# picks the interpreter of each implementation (serial, mp, ppe and the limit
# rows: the project venv's python; ppft: bench/.venv-ppft; ray:
# bench/.venv-ray; ppc: the project venv at the repo root), runs every
# measurement of bench/cases/ in a fresh subprocess of its own session,
# rounds interleaved over the implementations, with a timeout,
# then prints medians/ratios/targets and writes the report (docs/benchmarks.md
# on a full run, bench/results/ otherwise) and the throughput plot.
# Standard library only; the plot is drawn by bench/plot.py in a venv that
# has matplotlib.
import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
CASES_DIR = os.path.join(BENCH, "cases")
RESULTS = os.path.join(BENCH, "results")
DOCS = os.path.join(ROOT, "docs")

ALL = ["serial", "mp", "ppft", "ppc"]
DURATIONS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def dur_label(d):
    return {1e-6: "1us", 1e-5: "10us", 1e-4: "100us", 1e-3: "1ms",
            1e-2: "10ms", 1e-1: "100ms"}[d]


def build_cases():
    """(id, group, script, impls, extra args, per-impl rounds override)."""
    c = [
        dict(id="isprime", group="isprime", script="isprime.py", impls=ALL),
        dict(id="startup", group="startup", script="startup.py", impls=["mp", "ppft", "ppc"]),
        dict(id="echo_numpy", group="echo", script="echo.py",
             impls=["limit", "serial", "mp", "ppe", "ppft", "ray", "ppc", "ppc_novm"]),
        dict(id="echo_numpy_new", group="echo", script="echo.py",
             impls=["serial", "mp", "ppe", "ppft", "ray", "ppc", "ppc_novm"]),
        dict(id="echo_bytes", group="echo", script="echo.py",
             impls=["limit", "limit_novm", "serial", "mp", "ppe", "ppft", "ray", "ppc", "ppc_novm"]),
        dict(id="sum_primes", group="coarse", script="coarse.py", impls=["bare"] + ALL),
        dict(id="mandelbrot", group="coarse", script="coarse.py", impls=["bare"] + ALL),
        dict(id="mem_pending", group="memory", script="memory.py", impls=["mp", "ppft", "ppc"]),
        dict(id="worker_rss", group="memory", script="memory.py", impls=["mp", "ppft", "ppc"]),
    ]
    for d in DURATIONS:
        c.append(dict(id="curve_" + dur_label(d), group="curve", script="curve.py",
                      impls=["mp", "ppft", "ppc"], args=["--duration", repr(d)],
                      case="curve"))
    c.append(dict(id="remote", group="remote", script="remote.py", impls=["ppft", "ppc"],
                  rounds={"ppft": 3}))
    c += [dict(id=i, group="remote_tls", script="remote_tls.py", impls=["ppc", "ppc_plain"])
          for i in ("remote_tls_tiny", "remote_tls_echo")]  # TLS against cleartext
    c += [dict(id=i, group="mpi", script="mpi.py", impls=["mpi4py", "ppc"])
          for i in ("mpi_tiny", "mpi_startup")]
    c.append(dict(id="status", group="status", script="status.py", impls=["ppc"]))  # page cost
    return c


# ------------------------------------------------------------ interpreters

def probe(py, code, env):
    try:
        p = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60, cwd=CASES_DIR)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if p.returncode != 0:
        lines = (p.stderr or p.stdout).strip().splitlines()
        return False, lines[-1] if lines else "exit %d" % p.returncode
    return True, p.stdout.strip()


def clean_env():
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(k, None)
    return env


INFO = ("import sys, platform; print(platform.python_version())\n"
        "try:\n import numpy; print('numpy', numpy.__version__)\nexcept Exception: print('numpy -')\n")


def venv_failure(name):
    """Why bench/.venv-NAME is missing: the last line of run.sh's pip log."""
    try:
        with open(os.path.join(RESULTS, "venv-%s.log" % name), errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip() and "WARNING: Location" not in ln]
        return lines[-1][:160] if lines else "no log"
    except OSError:
        return "not built; run bench/run.sh"


def resolve_interpreters():
    """Returns {impl: {"py":..., "env":..., "ok": bool, "why": str, ...}}."""
    base_env = clean_env()
    # BENCH_PPC_PYTHON: another interpreter for the ppc column (e.g. a
    # build installed elsewhere); default: the project venv at the repo root
    ppc_py = os.environ.get("BENCH_PPC_PYTHON") or os.path.join(ROOT, ".venv", "bin", "python")
    ppft_py = os.path.join(BENCH, ".venv-ppft", "bin", "python")
    have_ppc_venv = os.path.exists(ppc_py)
    base_py = ppc_py if have_ppc_venv else sys.executable
    interp = {}
    for impl in ("serial", "mp", "ppe", "bare", "limit", "limit_novm", "mpi4py"):
        interp[impl] = dict(py=base_py, env=base_env, ok=True, why="")
    # Ray: its own venv (bench/run.sh builds it); usage statistics off
    ray_py = os.path.join(BENCH, ".venv-ray", "bin", "python")
    ray_env = dict(base_env, RAY_USAGE_STATS_ENABLED="0")
    if os.path.exists(ray_py):
        ok, out = probe(ray_py, "import ray, numpy; print(ray.__version__)", ray_env)
        interp["ray"] = dict(py=ray_py, env=ray_env, ok=ok,
                             why="" if ok else "n/a (ray not importable: %s)" % out[:160],
                             version=out if ok else None)
    else:
        interp["ray"] = dict(py=ray_py, env=ray_env, ok=False,
                             why="n/a (bench/.venv-ray could not be built: %s)" % venv_failure("ray"))
    # ppft
    if os.path.exists(ppft_py):
        ok, out = probe(ppft_py, "import pp, ppft; print(ppft.__version__)", base_env)
        interp["ppft"] = dict(py=ppft_py, env=base_env, ok=ok,
                              why="" if ok else "ppft not importable: " + out,
                              version=out if ok else None)
    else:
        interp["ppft"] = dict(py=ppft_py, env=base_env, ok=False,
                              why="bench/.venv-ppft missing (run bench/run.sh)")
    # ppc: our package in the project venv; else with the repo on PYTHONPATH
    check = ("import sys, pp\nassert 'ppft' not in sys.modules, 'this pp is ppft'\n"
             "print(pp.__file__, getattr(pp, '__version__', '?'))")
    if not have_ppc_venv:
        interp["ppc"] = dict(py=ppc_py, env=base_env, ok=False,
                             why="n/a (no project venv .venv: `make venv` failed or missing)")
    else:
        ok, out = probe(ppc_py, check, base_env)
        env = base_env
        if not ok:
            env2 = dict(base_env, PYTHONPATH=ROOT)
            ok2, out2 = probe(ppc_py, check, env2)
            if ok2:
                ok, out, env = ok2, out2 + " (via PYTHONPATH=repo root)", env2
        interp["ppc"] = dict(py=ppc_py, env=env, ok=ok,
                             why="" if ok else "n/a (pp not importable in .venv: %s)" % out[:160],
                             version=out if ok else None)
    # ppc a second time with cross-process reads refused (PPC_VM=0 turns
    # the path that reads the client's memory from a worker off)
    interp["ppc_novm"] = dict(interp["ppc"], env=dict(interp["ppc"]["env"], PPC_VM="0"))
    interp["ppc_plain"] = dict(interp["ppc"])  # remote_tls.py: node links without TLS
    for impl, d in interp.items():
        ok, out = probe(d["py"], INFO, base_env) if os.path.exists(d["py"]) else (False, "")
        lines = out.splitlines() if ok else []
        d["python"] = lines[0] if lines else "?"
        d["numpy"] = lines[1].split()[1] if len(lines) > 1 else "-"
    return interp


# ------------------------------------------------------------ running

class Runner:
    def __init__(self, args, interp):
        self.args = args
        self.interp = interp
        self.piddir = tempfile.mkdtemp(prefix="bench-pids-")
        self.current = None
        self.pgid_file = os.path.join(RESULTS, ".current_pgid")

    def kill_current(self):
        p = self.current
        if p is not None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        # servers a case started (they may have left our process group)
        for name in os.listdir(self.piddir):
            try:
                pid = int(open(os.path.join(self.piddir, name)).read())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if b"ppserver" in f.read():
                        os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            try:
                os.unlink(os.path.join(self.piddir, name))
            except OSError:
                pass

    def measure(self, case, impl):
        it = self.interp[impl]
        if not it["ok"]:
            return {"na": it["why"]}
        cmd = [it["py"], os.path.join(CASES_DIR, case["script"]), "--impl", impl,
               "--case", case.get("case", case["id"]), "--timeout", str(self.args.timeout)]
        cmd += case.get("args", [])
        if self.args.quick:
            cmd.append("--quick")
            if case["group"] == "curve":
                cmd += ["--target", "0.3"]
        env = dict(it["env"], BENCH_PIDDIR=self.piddir)
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, env=env, cwd=CASES_DIR,
                                 start_new_session=True, text=True)
        except OSError as e:
            return {"error": "cannot start: %s" % e}
        self.current = p
        try:
            with open(self.pgid_file, "w") as f:
                f.write("%d\n" % p.pid)
        except OSError:
            pass
        timed_out = False
        try:
            out, err = p.communicate(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill_current()
            out, err = p.communicate()
        finally:
            self.kill_current()
            self.current = None
            try:
                os.unlink(self.pgid_file)
            except OSError:
                pass
        wall = time.monotonic() - t0
        res = None
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                try:
                    res = json.loads(line)
                    break
                except ValueError:
                    pass
        if res is None:
            why = "timeout after %.0f s" % self.args.timeout if timed_out else \
                "exit %s, no result" % p.returncode
            tail = (err or "").strip().splitlines()
            res = {"error": why + (": " + tail[-1][:200] if tail else "")}
        res["wall"] = wall
        if "error" in res:
            self.save_log(case, impl, cmd, out, err)
        return res

    def save_log(self, case, impl, cmd, out, err):
        d = os.path.join(RESULTS, "logs")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "%s_%s.log" % (case["id"], impl)), "a") as f:
            f.write("$ %s\n--- stdout\n%s\n--- stderr\n%s\n\n" % (" ".join(cmd), out, err))


def run_all(args, cases, interp):
    runner = Runner(args, interp)

    def on_signal(signum, frame):
        runner.kill_current()
        sys.stderr.write("\ninterrupted: measurement processes killed\n")
        os._exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    results = {}
    t_start = time.monotonic()
    timeouts = {}          # impl -> count over the whole run
    MAX_TIMEOUTS = 3       # then the impl is skipped: a hanging build must not eat the bench
    for case in cases:
        impls = [i for i in case["impls"] if not args.impls or i in args.impls]
        results[case["id"]] = {i: [] for i in impls}
        rounds = args.rounds
        failures = {i: 0 for i in impls}
        for r in range(rounds):
            k = r % len(impls)
            for impl in impls[k:] + impls[:k]:       # rotate the order each round
                limit = case.get("rounds", {}).get(impl)
                if limit is not None and not args.quick and r >= limit:
                    continue
                if failures[impl] >= 2 or (failures[impl] and results[case["id"]][impl]
                                           and "timeout" in results[case["id"]][impl][-1].get("error", "")):
                    continue                          # broken here: do not spend more time
                if not interp[impl]["ok"] and r > 0:
                    continue
                if timeouts.get(impl, 0) >= MAX_TIMEOUTS:
                    if not results[case["id"]][impl]:
                        results[case["id"]][impl].append(
                            {"na": "skipped: %s timed out %d times in this run" % (impl, MAX_TIMEOUTS),
                             "round": r + 1})
                    continue
                res = runner.measure(case, impl)
                if "timeout" in res.get("error", ""):
                    timeouts[impl] = timeouts.get(impl, 0) + 1
                res["round"] = r + 1
                results[case["id"]][impl].append(res)
                if "error" in res:
                    failures[impl] += 1
                sys.stderr.write("[%-11s round %d/%d] %-6s %s  (%.1f s wall, %.0f s total)\n" % (
                    case["id"], r + 1, rounds, impl, short(case, res), res.get("wall", 0),
                    time.monotonic() - t_start))
                sys.stderr.flush()
    try:
        os.unlink(runner.pgid_file)
    except OSError:
        pass
    return results, time.monotonic() - t_start


def short(case, res):
    if "error" in res:
        return "error: " + res["error"][:150]
    if "na" in res:
        return "n/a: " + res["na"][:100]
    return fmt_plain(metric(case["id"], res), unit_of(case["id"]))


# ------------------------------------------------------------ statistics

def metric(case_id, res):
    if case_id.startswith("echo"):
        return res["mb_per_s"]
    return res["value"]


def unit_of(case_id):
    if case_id.startswith("echo") or case_id == "remote_tls_echo":
        return "MB/s"
    return {"mem_pending": "B/job", "worker_rss": "MB", "remote": "jobs/s",
            "remote_tls_tiny": "jobs/s"}.get(
        case_id, "jobs/s" if case_id.startswith("curve") else "s")


def summary(case_id, samples):
    """{"med","min","max","n","errors","na","extra"} or None-ish."""
    vals = [metric(case_id, s) for s in samples if "value" in s]
    errs = [s["error"] for s in samples if "error" in s]
    nas = [s["na"] for s in samples if "na" in s]
    if not vals:
        return {"n": 0, "errors": errs, "na": nas}
    ok = [s for s in samples if "value" in s]
    return {"med": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "errors": errs, "na": nas, "last": ok[-1]}


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        if v < 1e-3:
            return "%.1f us" % (v * 1e6)
        if v < 1:
            return "%.1f ms" % (v * 1e3)
        return "%.3f s" % v
    if unit in ("jobs/s", "B/job"):
        return "{:,.0f}".format(v) if v >= 100 else "%.1f" % v
    return "%.1f" % v


def fmt_plain(v, unit):
    s = fmt(v, unit)
    return s if unit == "s" else s + " " + unit


def cell(sm, unit, what="med"):
    if sm is None:
        return "-"
    if sm["n"] == 0:
        if sm["errors"]:
            return "error"
        if sm["na"]:
            return "n/a (not built)" if "not built" in sm["na"][0] else "n/a"
        return "-"
    return fmt(sm[what], unit)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fx(r, digits=2):
    return "-" if r is None else ("%.*fx" % (digits, r))


# ------------------------------------------------------------ report

def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def vm_reads():
    """Whether this kernel lets a worker read its client's memory
    (process_vm_readv), as Yama's ptrace_scope decides it."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        return "allowed (no Yama ptrace_scope)"
    if scope == "0":
        return "allowed (Yama ptrace_scope 0)"
    if scope in ("1", "2") and os.geteuid() == 0:
        return "allowed (Yama ptrace_scope %s, but run as root)" % scope
    return "refused (Yama ptrace_scope %s)" % scope


def machine_facts(interp):
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 2**20)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
            "vm_reads": vm_reads(),
            "load_start": loadavg(),
            "python_serial_mp": interp["mp"]["python"],
            "python_ppft": interp["ppft"]["python"], "python_ppc": interp["ppc"]["python"],
            "numpy": interp["mp"]["numpy"], "ppft": interp["ppft"].get("version") or "-",
            "ray": interp["ray"].get("version") or interp["ray"]["why"],
            "ppc": interp["ppc"].get("version") or interp["ppc"]["why"]}


def build_report(args, cases, results, interp, facts, elapsed, plot_ok):
    S = {cid: {impl: summary(cid, smp) for impl, smp in r.items()} for cid, r in results.items()}

    def med(cid, impl):
        sm = S.get(cid, {}).get(impl)
        return sm["med"] if sm and sm["n"] else None

    def field(cid, impl, key):
        """Median of one extra field over the rounds that gave a result."""
        vals = [x[key] for x in results.get(cid, {}).get(impl, []) if "value" in x and key in x]
        return statistics.median(vals) if vals else None

    def why(cid, impl="ppc"):
        sm = S.get(cid, {}).get(impl)
        if sm is None:
            return "not run"
        if sm["errors"]:
            return "error: " + sm["errors"][-1][:120]
        if sm["na"]:
            return sm["na"][0]
        return "no result"

    L = []
    w = L.append
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w("# Benchmarks")
    w("")
    w("Generated by `make bench` (`bash bench/run.sh%s`) on %s; %d round(s), medians reported "
      "(min and max beside them); total bench time %.0f s." % (
          (" " + " ".join(args.argv)) if args.argv else "", date, args.rounds, elapsed))
    if args.quick:
        w("")
        w("**QUICK smoke run: reduced sizes and rounds; the numbers are not comparable "
          "with the targets.**")
    w("")
    w("## Machine")
    w("")
    w("| fact | value |")
    w("| --- | --- |")
    for k, label in [("nproc", "nproc"), ("cpu", "CPU"), ("mem", "memory"), ("kernel", "kernel"),
                     ("python_serial_mp", "Python (serial, mp, bare)"),
                     ("python_ppft", "Python (ppft venv)"), ("python_ppc", "Python (ppc venv)"),
                     ("numpy", "numpy"), ("ppft", "ppft"), ("ray", "ray"),
                     ("ppc", "ppc (pp package)"), ("vm_reads", "cross-process reads"),
                     ("load_start", "1-min load average, start"),
                     ("load_end", "1-min load average, end")]:
        w("| %s | %s |" % (label, str(facts.get(k, "?")).replace("|", "/")))
    w("")
    # the load at the end includes the bench's own last measurements: only
    # the load found at the start says whether other work shared the CPUs
    busy = facts.get("load_start") or 0
    if busy > 0.5:
        w("**Warning: the machine was not idle (load average %.2f on %s cores): other work "
          "shared the CPUs, so times are noisier and slower than on an idle machine.**" % (
              busy, facts["nproc"]))
        w("")
    w("## How it is measured")
    w("")
    w("- Implementations: **serial** (plain loop in one process), **mp** (`multiprocessing.Pool()`, "
      "`apply_async` one job per input, fork start method), **ppft** (PyPI `ppft`, in its own venv "
      "`bench/.venv-ppft`), **ppc** (this project, the project venv `.venv`). ppft and ppc run the "
      "very same code: `import pp; job_server = pp.Server(...); job_server.submit(...); job()`. "
      "The echo cases add **ppe** (`concurrent.futures.ProcessPoolExecutor`), **ray** (PyPI `ray` "
      "in its own venv `bench/.venv-ray`, a local single-node Ray started by `ray.init()` before "
      "the clock), **ppc_novm** (ppc with cross-process reads off) and **limit** rows (bare "
      "processes doing only the unavoidable fills).")
    w("- Every measurement runs in a fresh process of its own session; rounds are interleaved "
      "(round 1: every implementation, round 2: every implementation, ...; the order rotates "
      "each round). A measurement has a %.0f s limit; a failing one shows `error`, a missing "
      "implementation `n/a`, and the bench goes on. An implementation that fails twice (or times "
      "out once) in a case is not run again in that case." % args.timeout)
    w("- Times are from the first submit to the last result, with the pool already created and "
      "warmed by one job, except for *startup*, which is from starting a fresh interpreter "
      "(`python script.py`) to its first result, imports included.")
    if not args.quick:
        w("- ppft's remote case runs 500 jobs (not 10,000: ~45 jobs/s) and only 3 rounds; jobs/s is "
          "extrapolated from those 500.")
    w("- An implementation that times out %d times in the run is skipped for the rest of it." % 3)
    w("- Raw samples: `bench/results/latest.json`; logs of failed measurements: "
      "`bench/results/logs/`.")
    w("")
    w("Run it: `make bench` (full run, about 15 minutes on 2 cores, the first one longer while "
      "it builds the peers' venvs; rewrites this file and "
      "`docs/benchmark_throughput.png`), `bash bench/run.sh --quick` (smoke run, about two minutes; "
      "report in `bench/results/`), `bash bench/run.sh --only CASE` with CASE one of isprime, "
      "startup, echo, coarse, memory, curve, remote (or a single case id such as echo_numpy).")
    w("")

    # ---- targets
    t_rows = []

    def verdict(ok, missing):
        if missing:
            m = missing[4:].strip(" ()") if missing.startswith("n/a") else missing
            return "n/a (ppc: %s)" % m
        return "PASS" if ok else "FAIL"

    mp_i, se_i, pc_i = med("isprime", "mp"), med("isprime", "serial"), med("isprime", "ppc")
    if pc_i is None:
        t_rows.append(("1. isprime: ppc >= 20x faster than mp, <= 5x serial", "-",
                       verdict(False, why("isprime"))))
    else:
        a, b = mp_i / pc_i, pc_i / se_i
        t_rows.append(("1. isprime: ppc >= 20x faster than mp, <= 5x serial",
                       "%.1fx faster than mp; %.1fx serial time" % (a, b),
                       verdict(a >= 20 and b <= 5, None)))
    mp_s, pc_s = med("startup", "mp"), med("startup", "ppc")
    mp_l, pc_l = field("startup", "mp", "launch_s"), field("startup", "ppc", "launch_s")
    t_rows.append((
        "2. interpreter start to first result >= 2x sooner than multiprocessing.Pool(), "
        "imports included",
        "-" if pc_s is None or mp_s is None else
        "%s vs %s: %s sooner (import pp %s, multiprocessing %s); from process launch "
        "(Python's own start-up included, the same for both): %s vs %s = %s" % (
            fmt(pc_s, "s"), fmt(mp_s, "s"), fx(ratio(mp_s, pc_s)),
            fmt(field("startup", "ppc", "import_s"), "s"),
            fmt(field("startup", "mp", "import_s"), "s"),
            fmt(pc_l, "s"), fmt(mp_l, "s"), fx(ratio(mp_l, pc_l))),
        verdict(pc_s is not None and mp_s is not None and mp_s / pc_s >= 2,
                None if pc_s is not None and mp_s is not None else
                why("startup", "ppc" if pc_s is None else "mp"))))
    pi = field("startup", "ppc", "import_s")
    t_rows.append(("2b. `import pp` <= 10 ms", "-" if pi is None else fmt(pi, "s"),
                   verdict(pi is not None and pi <= 0.010,
                           None if pi is not None else why("startup"))))
    mb = "8" if args.quick else "64"

    def mbs(v):
        return "-" if v is None else "%.0f" % v

    def pct(a, b):
        return "-" if a is None or not b else "%.0f%%" % (100.0 * a / b)

    mp_n, pc_n, ry_n = med("echo_numpy", "mp"), med("echo_numpy", "ppc"), med("echo_numpy", "ray")
    li_n, nv_n = med("echo_numpy", "limit"), med("echo_numpy", "ppc_novm")
    miss = why("echo_numpy") if pc_n is None else None
    peer = next(("%s: %s" % (i, why("echo_numpy", i)) for i, v in (("ray", ry_n), ("mp", mp_n))
                 if v is None), None)
    t_rows.append((
        "3a. 4 x %s MB numpy echo: faster than Ray, >= 4x multiprocessing" % mb,
        "-" if pc_n is None else
        "%s MB/s: %s Ray (%s), %s mp (%s); limit %s MB/s (ppc at %s); reads refused "
        "(PPC_VM=0) %s MB/s" % (mbs(pc_n), fx(ratio(pc_n, ry_n)), mbs(ry_n), fx(ratio(pc_n, mp_n)),
                                 mbs(mp_n), mbs(li_n), pct(pc_n, li_n), mbs(nv_n)),
        "n/a (%s)" % peer if peer and not miss else
        verdict(miss is None and pc_n > ry_n and pc_n / mp_n >= 4, miss)))
    mp_e, pc_e, nv_e = med("echo_bytes", "mp"), med("echo_bytes", "ppc"), med("echo_bytes", "ppc_novm")
    li_e, ln_e = med("echo_bytes", "limit"), med("echo_bytes", "limit_novm")
    reads = facts.get("vm_reads", "?")
    if not reads.startswith("allowed"):
        miss = "n/a (this kernel refuses cross-process reads: %s)" % reads
    elif pc_e is None:
        miss = why("echo_bytes")
    else:
        miss = None if mp_e is not None else "mp: " + why("echo_bytes", "mp")
    t_rows.append((
        "3b. 4 x %s MB bytes echo >= 5x multiprocessing where cross-process reads are allowed; "
        "refused beside it" % mb,
        "-" if pc_e is None else
        "%s vs %s MB/s: %s (limit %s MB/s, ppc at %s); reads refused (PPC_VM=0): %s MB/s = %s mp "
        "(limit %s MB/s, ppc at %s)" % (
            mbs(pc_e), mbs(mp_e), fx(ratio(pc_e, mp_e), 1), mbs(li_e), pct(pc_e, li_e),
            mbs(nv_e), fx(ratio(nv_e, mp_e), 1), mbs(ln_e), pct(nv_e, ln_e)),
        "n/a (%s)" % miss if miss and not miss.startswith("n/a") and pc_e is not None else
        verdict(miss is None and pc_e / mp_e >= 5, miss)))
    parts, oks, miss = [], [], None
    for cid in ("sum_primes", "mandelbrot"):
        b, p = med(cid, "bare"), med(cid, "ppc")
        if p is None or b is None:
            miss = miss or (why(cid) if p is None else "bare-process limit missing")
        else:
            parts.append("%s %.3fx" % (cid, p / b))
            oks.append(p / b <= 1.03)
    t_rows.append(("4. coarse jobs within 3% of the bare-process limit",
                   ", ".join(parts) or "-", verdict(all(oks), miss)))
    pm = med("mem_pending", "ppc")
    t_rows.append(("5. <= 300 bytes client memory per pending job",
                   "-" if pm is None else "%.0f B/job" % pm,
                   verdict(pm is not None and pm <= 300, None if pm is not None else why("mem_pending"))))
    rm = med("remote", "ppc")
    t_rows.append(("remote: >= 20,000 jobs/s (1 ppserver, 2 workers, loopback)",
                   "-" if rm is None else "{:,.0f} jobs/s".format(rm),
                   verdict(rm is not None and rm >= 20000, None if rm is not None else why("remote"))))
    w("## Targets (ppc)")
    w("")
    if args.quick:
        w("(Quick run: verdicts below are on reduced sizes, for the smoke test only.)")
        w("")
    w("| target | measured | verdict |")
    w("| --- | --- | --- |")
    for t in t_rows:
        w("| %s | %s | %s |" % t)
    w("")

    # ---- generic tables
    def table(cid, title, impls, note=None, ratio_col=None):
        if cid not in S:
            return
        unit = unit_of(cid)
        w("### " + title)
        w("")
        if note:
            w(note)
            w("")
        hdr = "| impl | median | min | max | rounds ok |"
        sep = "| --- | --- | --- | --- | --- |"
        if ratio_col:
            hdr += " %s |" % ratio_col[0]
            sep += " --- |"
        w(hdr)
        w(sep)
        for impl in impls:
            sm = S[cid].get(impl)
            if sm is None:
                continue
            row = "| %s | %s | %s | %s | %d |" % (impl, cell(sm, unit), cell(sm, unit, "min"),
                                                  cell(sm, unit, "max"), sm["n"])
            if ratio_col:
                row += " %s |" % ratio_col[1](impl)
            w(row)
        w("")

    def jobs_used(cid, impl):
        sm = S.get(cid, {}).get(impl)
        return "{:,}".format(sm["last"]["jobs"]) if sm and sm["n"] else "-"

    w("## Results")
    w("")
    if "isprime" in S:
        table("isprime", "1. isprime: %s jobs, one submit each (time, lower is better)" % (
              "1,998" if args.quick else "9,998"), ALL,
              note="`isprime(n)` for n in range(2, %s), modules `(\"math\",)`; "
                   "serial is the plain loop." % ("2000" if args.quick else "10000"),
              ratio_col=("vs mp (x faster) / vs serial (x time)", lambda i: "%s / %s" % (
                  fx(ratio(mp_i, med("isprime", i)), 1), fx(ratio(med("isprime", i), se_i), 1))))
        w("Ratios: ppc vs multiprocessing: %s faster; ppc vs serial: %s the serial time." % (
            fx(ratio(mp_i, pc_i), 1), fx(ratio(pc_i, se_i), 1)))
        w("")
    table("startup", "2. Startup: interpreter start to first result of a trivial job, imports "
          "included (lower is better)", ["mp", "ppft", "ppc"],
          note="A fresh interpreter per measurement runs a script: `import multiprocessing` / "
               "`import pp`, `multiprocessing.Pool()` / `pp.Server()`, one trivial job, its "
               "result. median = from the script's first line (the interpreter has started) to "
               "the first result. Beside it, medians of the parts: import, pool made to first "
               "result, and the whole from launching the process (`python script.py`, Python's "
               "own start-up and site included, the same for every column).",
          ratio_col=("x sooner than mp / import / pool to first result / from launch (x mp)",
                     lambda i: "%s / %s / %s / %s (%s)" % (
                         fx(ratio(mp_s, med("startup", i))),
                         fmt(field("startup", i, "import_s"), "s"),
                         fmt(field("startup", i, "first_result_s"), "s"),
                         fmt(field("startup", i, "launch_s"), "s"),
                         fx(ratio(mp_l, field("startup", i, "launch_s"))))))
    echo_note = (
        "MB/s = payload MB moved one way / time = 4 x %s MB / (first submit to last result), "
        "pool made and warmed before the clock; each payload also travels back. "
        "mp = `multiprocessing.Pool().apply_async`, ppe = `concurrent.futures."
        "ProcessPoolExecutor().submit` (both fork), ray = a local single-node Ray "
        "(`ray.init(num_cpus=%s, object_store_memory=2 GiB)`, started once before the clock as "
        "its users do; not `local_mode`, which would run jobs in the client), each payload "
        "`ray.put`, then `echo.remote(ref)`, results by `ray.get` (read-only arrays over its store); ppc_novm = ppc with "
        "`PPC_VM=0` in the environment, the path a kernel that refuses cross-process reads "
        "(Yama ptrace_scope 1-3) gets. serial = in-process `pickle.loads(pickle.dumps(x, 5))`: "
        "the serialization cost alone, nothing moves. " % (mb, facts["nproc"]))
    limit_note = {
        "echo_bytes":
            "limit rows: the fills of fresh memory any design must do for bytes results copied "
            "once, no framework, spread evenly over %s forked processes (at best a design "
            "spreads them over every core; a fill: fresh mapping, pages faulted in with one "
            "madvise, then memcpy). limit = cross-process reads allowed: 2 fills per payload "
            "(the worker's argument, the client's result). limit_novm = reads refused: 3 fills "
            "and a copy per payload (the client's argument into a shared segment, the worker's "
            "argument from it, the worker's result back into that populated segment, the "
            "client's result from it)." % facts["nproc"],
        "echo_numpy":
            "limit row: the one fill of fresh memory any design must do when an array result "
            "is a mapped view, no framework: %s forked processes each fill a fresh memfd "
            "segment with an argument (one fill per payload, in the receiver), pass its fd to "
            "the client over a unix socket, and the client maps it copy-on-write as a writable "
            "array (no fill for the result)." % facts["nproc"]}
    limit_note["echo_numpy_new"] = (
        "The job returns a new array (`x + 1`), so the result cannot be the argument's own "
        "memory; no limit row.")
    for cid, sub, what in (("echo_numpy", "a", "numpy float64 arrays"),
                           ("echo_numpy_new", "a2", "numpy float64 arrays, job returns x + 1"),
                           ("echo_bytes", "b", "bytes")):
        impls = next((c["impls"] for c in cases if c["id"] == cid), [])
        table(cid, "3%s. Echo 4 x %s MB %s (MB/s, higher is better)" % (sub, mb, what), impls,
              note=(echo_note if cid == "echo_numpy" or "echo_numpy" not in S
                    else "MB/s and the implementations as in 3a. ") + limit_note[cid],
              ratio_col=("x mp / x ray / % of limit", lambda i, c=cid: "%s / %s / %s" % (
                  fx(ratio(med(c, i), med(c, "mp"))), fx(ratio(med(c, i), med(c, "ray"))),
                  pct(med(c, i), med(c, "limit_novm") if i == "ppc_novm" and
                      med(c, "limit_novm") is not None else med(c, "limit")))))
    if args.quick:
        coarse_titles = (("sum_primes", "4a. Coarse (quick): seed sum_primes, 8 inputs 20000..20700"),
                         ("mandelbrot", "4b. Coarse (quick): Mandelbrot 200x200, 300 iterations, "
                                        "100 chunks"))
    else:
        coarse_titles = (("sum_primes", "4a. Coarse: seed sum_primes, 8 inputs 100000..100700"),
                         ("mandelbrot", "4b. Coarse: Mandelbrot 500x500, 1000 iterations, 100 chunks"))
    for cid, title in coarse_titles:
        table(cid, title + " (time, lower is better)", ["bare"] + ALL,
              note="bare = bare-process limit: %s forked processes, each computing a static "
                   "share (i::N) of the same jobs, results piped back; no framework." %
                   facts["nproc"],
              ratio_col=("/ bare limit", lambda i, c=cid: fx(ratio(med(c, i), med(c, "bare")), 3)))
    n_mem = {"mp": "200,000", "ppft": "200,000", "ppc": "1,000,000"} if not args.quick else \
        {"mp": "20,000", "ppft": "20,000", "ppc": "100,000"}
    table("mem_pending", "5a. Client memory per pending tiny job (bytes/job, lower is better)",
          ["mp", "ppft", "ppc"],
          note="RSS growth of the client (/proc/self/statm) after N `submit(tiny, (-1,))` "
               "whose results are never collected and which cannot run yet: every worker "
               "blocked in a sleeping job (mp, ppft and ppc alike). "
               "N: mp %s, ppft %s, ppc %s." % (n_mem["mp"], n_mem["ppft"], n_mem["ppc"]),
          ratio_col=("setup", lambda i: (S["mem_pending"][i] or {}).get("last", {}).get("setup", "-")))
    table("worker_rss", "5b. Worker resident size (MB per worker process)", ["mp", "ppft", "ppc"],
          note="VmRSS (/proc/PID/status) of every descendant process of the client, found by "
               "scanning /proc, after 4 x nproc jobs; shared (fork) pages count in each.",
          ratio_col=("processes", lambda i: str((S["worker_rss"][i] or {}).get("last", {}).get("workers", "-"))))

    curve_ids = [("curve_" + dur_label(d), d) for d in DURATIONS if "curve_" + dur_label(d) in S]
    if curve_ids:
        w("### 6. Throughput against job duration (jobs/s, higher is better)")
        w("")
        w("Busy-wait jobs; per point the job count is chosen by a short calibration so the "
          "timed batch takes about %s s. ideal = nproc / duration." % ("0.3" if args.quick else "1"))
        w("")
        w("| duration | mp | ppft | ppc | ideal | ppc / mp |")
        w("| --- | --- | --- | --- | --- | --- |")
        for cid, d in curve_ids:
            w("| %s | %s | %s | %s | %s | %s |" % (
                dur_label(d), cell(S[cid].get("mp"), "jobs/s"), cell(S[cid].get("ppft"), "jobs/s"),
                cell(S[cid].get("ppc"), "jobs/s"), fmt(facts["nproc"] / d, "jobs/s"),
                fx(ratio(med(cid, "ppc"), med(cid, "mp")))))
        w("")
        if plot_ok:
            w("![throughput against job duration](benchmark_throughput.png)")
        else:
            w("(plot not drawn: matplotlib unavailable)")
        w("")
    table("remote", "7. Remote: 1 ppserver on 127.0.0.1, 2 workers, client ncpus=0 (jobs/s, "
          "higher is better)", ["ppft", "ppc"],
          note="Tiny jobs, one submit each, after a 100-job warm-up probe: ppc %s jobs, ppft %s "
               "jobs (asked: %s and %s; a count below 10,000 is capped at ~15 s of work and its "
               "jobs/s extrapolated)." % (
                   jobs_used("remote", "ppc"), jobs_used("remote", "ppft"),
                   *(("2,000", "100") if args.quick else ("10,000", "500"))),
          ratio_col=("x ppft", lambda i: fx(ratio(med("remote", i), med("remote", "ppft")), 1)))

    for cid, what in (("remote_tls_tiny", "tiny jobs, jobs/s"), ("remote_tls_echo", "4 x 64 MB echo, MB/s")):
        table(cid, "8. Remote over TLS against cleartext (%s, higher is better)" % what,
              ["ppc", "ppc_plain"], note="ppc = TLS 1.3 (PSK from the secret); ppc_plain = the same "
              "engine with TLS off on both sides (a benchmark-only switch).",
              ratio_col=("x cleartext", lambda i, c=cid: fx(ratio(med(c, i), med(c, "ppc_plain")), 2)))
    for cid, what in (("mpi_tiny", "10,000 tiny jobs, one submit each"),
                      ("mpi_startup", "mpirun launched to first result")):
        table(cid, "9. mpirun -n 4 on this machine: %s (s, lower is better)" % what,
              ["mpi4py", "ppc"], note="`python -m pp.run` against mpi4py.futures' "
              "MPIPoolExecutor (`python -m mpi4py.futures`, bench/.venv-mpi4py).",
              ratio_col=("x mpi4py", lambda i: fx(ratio(med(cid, "mpi4py"), med(cid, i)), 1)))

    errs = []
    for cid, r in results.items():
        for impl, smp in r.items():
            for s in smp:
                if "error" in s:
                    errs.append("- %s / %s / round %s: %s" % (cid, impl, s.get("round"),
                                                             s["error"].replace("|", "/")[:300]))
    nas = sorted({"- %s: %s" % (impl, interp[impl]["why"]) for impl in interp
                  if not interp[impl]["ok"]})
    if errs or nas:
        w("## Errors and missing implementations")
        w("")
        for line in nas + errs:
            w(line)
        w("")
    return "\n".join(L), t_rows


def draw_plot(results, interp, out_png):
    """Run bench/plot.py under an interpreter that has matplotlib."""
    pts = {}
    for d in DURATIONS:
        cid = "curve_" + dur_label(d)
        for impl, smp in results.get(cid, {}).items():
            sm = summary(cid, smp)
            if sm["n"]:
                pts.setdefault(impl, []).append([d, sm["med"], sm["min"], sm["max"]])
    if not pts:
        return False
    data = {"points": pts, "ncpus": os.cpu_count(), "durations": DURATIONS, "out": out_png}
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    try:
        for impl in ("mp", "ppft"):
            py = interp[impl]["py"]
            if not os.path.exists(py):
                continue
            try:
                p = subprocess.run([py, os.path.join(BENCH, "plot.py"), path], env=clean_env(),
                                   capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if p.returncode == 0:
                return True
            sys.stderr.write("plot with %s failed: %s\n" % (py, p.stderr.strip()[-300:]))
        return False
    finally:
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description="ppc benchmark driver (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, smaller sizes")
    ap.add_argument("--only", action="append", default=[],
                    help="case or group to run (isprime, startup, echo, coarse, memory, curve, "
                         "remote, or a case id like echo_bytes); repeat or comma-separate")
    ap.add_argument("--impls", default="", help="comma list to restrict implementations (debug)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (default 5, quick 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-measurement limit, seconds")
    ap.add_argument("--docs", dest="docs", action="store_true", default=None,
                    help="write docs/benchmarks.md even for a quick or --only run")
    ap.add_argument("--no-docs", dest="docs", action="store_false",
                    help="write the report under bench/results/ only")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.impls = [i for i in args.impls.split(",") if i]
    only = [x for o in args.only for x in o.split(",") if x]
    cases = build_cases()
    if only:
        known = {c["id"] for c in cases} | {c["group"] for c in cases}
        bad = [o for o in only if o not in known]
        if bad:
            ap.error("unknown case %s; known: %s" % (", ".join(bad), ", ".join(sorted(known))))
        cases = [c for c in cases if c["id"] in only or c["group"] in only]
    if args.docs is None:
        args.docs = not args.quick and not only and not args.impls
    os.makedirs(RESULTS, exist_ok=True)

    interp = resolve_interpreters()
    for impl in ("serial", "mp", "ppft", "ray", "ppc"):
        it = interp[impl]
        sys.stderr.write("%-6s %s%s\n" % (impl, it["py"], "" if it["ok"] else "  -> " + it["why"]))
    facts = machine_facts(interp)

    results, elapsed = run_all(args, cases, interp)
    facts["load_end"] = loadavg()

    out_dir = DOCS if args.docs else RESULTS
    os.makedirs(out_dir, exist_ok=True)
    plot_ok = draw_plot(results, interp, os.path.join(out_dir, "benchmark_throughput.png"))
    report, targets = build_report(args, cases, results, interp, facts, elapsed, plot_ok)
    md = os.path.join(out_dir, "benchmarks.md")
    with open(md, "w") as f:
        f.write(report + "\n")
    raw = {"date": time.time(), "argv": args.argv, "facts": facts, "results": results,
           "interpreters": {k: {kk: vv for kk, vv in v.items() if kk != "env"}
                            for k, v in interp.items()}}
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(raw, f, indent=1)
    sys.stdout.write(report + "\n\n")
    sys.stdout.write("report written to %s (raw samples: %s)\n" % (
        os.path.relpath(md, ROOT), os.path.relpath(os.path.join(RESULTS, "latest.json"), ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
