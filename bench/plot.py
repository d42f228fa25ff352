# bench/plot.py - draws the throughput curve (jobs/s against job duration,
# log-log, Agg backend) from the JSON file the driver passes as argv[1]:
# {"points": {impl: [[duration, median, min, max], ...]}, "ncpus": N,
#  "durations": [...], "out": "path.png"}. Run by bench/driver.py in a venv
# that has matplotlib.
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"mp": ("multiprocessing (apply_async)", "tab:blue", "o"),
         "ppft": ("ppft", "tab:orange", "s"),
         "ppc": ("ppc (this project)", "tab:green", "^")}


def main(path):
    with open(path) as f:
        data = json.load(f)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    ds = data["durations"]
    n = data["ncpus"]
    ax.plot(ds, [n / d for d in ds], "--", color="grey", label="ideal: %d cores / duration" % n)
    for impl in ("mp", "ppft", "ppc"):
        pts = sorted(data["points"].get(impl, []))
        if not pts:
            continue
        label, color, marker = STYLE[impl]
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker=marker, color=color, label=label, capsize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("job duration (busy wait), seconds")
    ax.set_ylabel("jobs per second (median; bars: min-max)")
    ax.set_title("Throughput against job duration, %d cores" % n)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(data["out"])


if __name__ == "__main__":
    main(sys.argv[1])
