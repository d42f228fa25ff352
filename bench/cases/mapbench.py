# bench/cases/mapbench.py - the map case: isprime over range(200000) side by
# side, and Executor.submit against Server.submit per job. Run by
# bench/run.sh (`make bench`) after the driver, or alone:
#   .venv/bin/python bench/cases/mapbench.py [--quick] [--rounds N]
# Without --variant it is the orchestrator: every variant runs in a fresh
# subprocess of its own interpreter (the project venv; bench/.venv-ray and
# bench/.venv-dask for the peers, BENCH_RAY_PY / BENCH_DASK_PY to use
# others), medians over the rounds are printed with their ratios and
# written to bench/results/map.md. With --variant V it measures V once per
# round (pool made and warmed first, untimed) and prints JSON.
#
# Variants: serial loop; limit (ncpus plain forked processes, each looping
# over its share, blocks of 64 dealt round-robin, told to go through a pipe); ppc Server.map and
# Executor.map (automatic chunks); ProcessPoolExecutor.map with chunksize 1
# (on 20,000 items, per item) and hand-tuned (len/8); joblib's default
# Parallel; dask.distributed LocalCluster client.map and Ray remote tasks
# (20,000 items, per item: they cost 1-2 ms a task); per-job submit cost of
# Executor.submit and Server.submit (10,000 tiny jobs, submit to last result).
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
N = 200000
N_SLOW = 20000  # ProcessPoolExecutor chunksize 1, dask and Ray: per item


def isprime(n):
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    r = int(math.isqrt(n))
    i = 3
    while i <= r:
        if n % i == 0:
            return False
        i += 2
    return True


def tiny(x):
    return x + 1


def ncpus():
    return len(os.sched_getaffinity(0))


def expect(n):
    return sum(1 for x in range(n) if isprime(x))


def run_variant(v, n, rounds):
    """Times (seconds) of `rounds` runs of variant v over range(n)."""
    sys.path.insert(0, HERE)
    from mapbench import isprime as f, tiny as t  # by reference in every worker
    times = []
    want = expect(n)
    ncpu = ncpus()

    def timed(fn):
        t0 = time.perf_counter()
        got = fn()
        dt = time.perf_counter() - t0
        if got != want:
            raise RuntimeError("%s: %r primes, expected %r" % (v, got, want))
        times.append(dt)

    if v == "serial":
        for _ in range(rounds):
            timed(lambda: sum(1 for x in range(n) if f(x)))
    elif v == "limit":
        for _ in range(rounds):
            procs = []
            for k in range(ncpu):
                go_r, go_w = os.pipe()
                res_r, res_w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.read(go_r, 1)
                    # blocks of 64 dealt round-robin: every share has small
                    # and large, odd and even numbers alike
                    c = sum(1 for b in range(k * 64, n, ncpu * 64)
                            for x in range(b, min(b + 64, n)) if f(x))
                    os.write(res_w, str(c).encode())
                    os._exit(0)
                procs.append((pid, go_w, res_r))
            t0 = time.perf_counter()
            for _, go_w, _ in procs:
                os.write(go_w, b"g")
            total = sum(int(os.read(r, 64)) for _, _, r in procs)
            dt = time.perf_counter() - t0
            for pid, go_w, res_r in procs:
                os.waitpid(pid, 0)
                os.close(go_w)
                os.close(res_r)
            if total != want:
                raise RuntimeError("limit: wrong count")
            times.append(dt)
    elif v in ("ppc_map", "ppc_exec"):
        import pp
        if v == "ppc_map":
            s = pp.Server()
            s.map(f, range(1000))
            for _ in range(rounds):
                timed(lambda: sum(s.map(f, range(n))))
            s.destroy()
        else:
            with pp.Executor() as ex:
                list(ex.map(f, range(1000)))
                for _ in range(rounds):
                    timed(lambda: sum(ex.map(f, range(n))))
    elif v in ("ppe_1", "ppe_tuned"):
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor() as ex:
            list(ex.map(f, range(100)))
            cs = 1 if v == "ppe_1" else max(1, n // 8)
            for _ in range(rounds):
                timed(lambda: sum(ex.map(f, range(n), chunksize=cs)))
    elif v == "joblib":
        import joblib
        with joblib.Parallel(n_jobs=-1) as par:
            par(joblib.delayed(f)(x) for x in range(100))
            for _ in range(rounds):
                timed(lambda: sum(par(joblib.delayed(f)(x) for x in range(n))))
    elif v == "dask":
        from dask.distributed import Client, LocalCluster
        with LocalCluster(n_workers=ncpu, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cl, Client(cl) as c:
            sum(c.gather(c.map(f, range(100), pure=False)))
            for _ in range(rounds):
                timed(lambda: sum(c.gather(c.map(f, range(n), pure=False))))
    elif v == "ray":
        import ray
        ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False)
        rf = ray.remote(f)
        ray.get([rf.remote(x) for x in range(100)])
        for _ in range(rounds):
            timed(lambda: sum(ray.get([rf.remote(x) for x in range(n)])))
        ray.shutdown()
    elif v in ("submit_server", "submit_exec"):
        import pp
        want = None
        if v == "submit_server":
            s = pp.Server()
            s.submit(t, (1,))()
            for _ in range(rounds):
                t0 = time.perf_counter()
                js = [s.submit(t, (i,)) for i in range(n)]
                r = [j() for j in js]
                times.append(time.perf_counter() - t0)
                assert r[-1] == n
            s.destroy()
        else:
            with pp.Executor() as ex:
                ex.submit(t, 1).result()
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    fs = [ex.submit(t, i) for i in range(n)]
                    r = [x.result() for x in fs]
                    times.append(time.perf_counter() - t0)
                    assert r[-1] == n
    else:
        raise SystemExit("unknown variant %s" % v)
    return times


def interpreter(v):
    own = os.path.join(ROOT, ".venv", "bin", "python")
    if v == "ray":
        return os.environ.get("BENCH_RAY_PY") or os.path.join(ROOT, "bench", ".venv-ray", "bin",
                                                                "python")
    if v == "dask":
        return os.environ.get("BENCH_DASK_PY") or os.path.join(ROOT, "bench", ".venv-dask",
                                                                 "bin", "python")
    return own if os.path.exists(own) else sys.executable


def measure(v, n, rounds, timeout):
    py = interpreter(v)
    if not os.path.exists(py):
        return {"na": "no interpreter %s" % py}
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=ROOT)
    try:
        p = subprocess.run([py, os.path.abspath(__file__), "--variant", v, "--n", str(n),
                            "--rounds", str(rounds)], capture_output=True, text=True,
                           timeout=timeout, env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"na": "timeout after %d s" % timeout}
    if p.returncode != 0:
        return {"na": (p.stderr.strip().splitlines() or ["rc %d" % p.returncode])[-1][:150]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant")
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma list of variants")
    a = ap.parse_args()
    if a.variant:
        print(json.dumps({"times": run_variant(a.variant, a.n, a.rounds or 3)}))
        return 0
    rounds = a.rounds or (2 if a.quick else 5)
    n = 20000 if a.quick else N
    slow_n = 2000 if a.quick else N_SLOW
    plan = [("serial", n, rounds), ("limit", n, rounds), ("ppc_map", n, rounds),
            ("ppc_exec", n, rounds), ("ppe_tuned", n, rounds), ("ppe_1", slow_n, 2),
            ("joblib", n, 3), ("dask", slow_n, 2), ("ray", slow_n, 2),
            ("submit_server", 10000, rounds), ("submit_exec", 10000, rounds)]
    only = [x for x in a.only.split(",") if x]
    res = {}
    for v, vn, r in plan:
        if only and v not in only:
            continue
        out = measure(v, vn, r, timeout=600)
        if "times" in out:
            med = statistics.median(out["times"])
            res[v] = dict(n=vn, med=med, per_item=med / vn, times=out["times"])
            sys.stderr.write("%-13s n=%-7d median %.4f s  (%.3f us/item)\n"
                             % (v, vn, med, med / vn * 1e6))
        else:
            res[v] = out
            sys.stderr.write("%-13s %s\n" % (v, out["na"]))
    lines = ["# map case (isprime over range(%d)); %d CPUs; load %.1f at the end" % (
        n, ncpus(), os.getloadavg()[0]), "",
        "| variant | items | median | per item | vs ppc Server.map |", "| --- | --- | --- | --- | --- |"]
    base = res.get("ppc_map", {}).get("per_item")
    for v, _vn, _r in plan:
        x = res.get(v)
        if not x:
            continue
        if "med" not in x:
            lines.append("| %s | | n/a (%s) | | |" % (v, x["na"]))
            continue
        rel = ("%.2fx" % (x["per_item"] / base)) if base else "-"
        lines.append("| %s | %d | %.4f s | %.3f us | %s |" % (v, x["n"], x["med"],
                                                          x["per_item"] * 1e6, rel))
    if "submit_server" in res and "submit_exec" in res and "med" in res["submit_exec"] \
            and "med" in res["submit_server"]:
        lines.append("")
        lines.append("Executor.submit / Server.submit per job: %.2fx" % (
            res["submit_exec"]["med"] / res["submit_server"]["med"]))
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "map.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(ROOT, "bench", "results", "map.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
