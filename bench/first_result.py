"""First result of a new pool: time from the constructor to the first
result of a trivial job, pp.Server() against multiprocessing.Pool() (fork),
each in a fresh interpreter (imports excluded), runs interleaved; medians.

    python bench/first_result.py [runs]
"""
import statistics
import subprocess
import sys

PP = ("import time,pp; t=time.perf_counter(); s=pp.Server(); s.submit(abs,(-1,))(); "
      "print(time.perf_counter()-t); s.destroy()")
MP = ("import time,multiprocessing as m; t=time.perf_counter(); p=m.Pool(); "
      "p.apply(abs,(-1,)); print(time.perf_counter()-t); p.terminate()")


def once(code, env=None):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.split()[-1])


def main():
    import os
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    spawn_env = dict(os.environ, PPC_START="spawn")
    res = {"pp.Server()": [], "pp.Server() PPC_START=spawn": [], "multiprocessing.Pool()": []}
    for _ in range(runs):
        res["pp.Server()"].append(once(PP))
        res["pp.Server() PPC_START=spawn"].append(once(PP, spawn_env))
        res["multiprocessing.Pool()"].append(once(MP))
    for k, v in res.items():
        print(f"{k:30s} median {statistics.median(v) * 1e3:6.2f} ms  "
              f"min {min(v) * 1e3:6.2f}  max {max(v) * 1e3:6.2f}  (n={len(v)})")


if __name__ == "__main__":
    main()
