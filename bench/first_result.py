"""First result of a new pool: time from the interpreter's first line to the
first result of a trivial job, imports included (`import pp` /
`import multiprocessing`), pp.Server() against multiprocessing.Pool()
(fork), each in a fresh interpreter (`python -c`), runs interleaved;
medians. A quick check by hand; `make bench`'s startup case is the
reference (bench/cases/startup.py).

    python bench/first_result.py [runs]
"""
import statistics
import subprocess
import sys

PP = ("import time; t=time.perf_counter(); import pp; s=pp.Server(); s.submit(abs,(-1,))(); "
      "print(time.perf_counter()-t); s.destroy()")
MP = ("import time; t=time.perf_counter(); import multiprocessing as m; p=m.Pool(); "
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
