# bench/cases/status.py - the cost of the status page: the isprime case
# (9,998 jobs, local pool) and the remote case (tiny jobs through one
# ppserver on 127.0.0.1 with 2 workers, client ncpus=0) timed without a
# status page, and with status pages served (client status_port=0, the
# ppserver's --status-port) and polled every 100 ms by another process
# (GET /status, as the page's script does, ten times faster), side by side
# in one process: pairs of runs in alternating order. A run repeats its
# batch for about 1.5 s (so it spans ~15 polls) and gives its median batch;
# the case reports each side's median over the runs and the loss (target:
# <= 3%). ppc only.
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

import common
from isprime import isprime

POLLER = r"""
import sys, time, urllib.request
urls = sys.argv[1:]
while True:
    t = time.monotonic()
    for u in urls:
        try:
            urllib.request.urlopen(u + "status", timeout=2).read()
        except OSError:
            pass
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
"""


def tiny(x):
    return x + 1


def start_poller(urls):
    return subprocess.Popen([sys.executable, "-c", POLLER] + urls, stdin=subprocess.DEVNULL)


def stop(proc):
    proc.kill()
    proc.wait()


RUN_S = 1.5


def batches(fn):
    """fn() repeated for RUN_S seconds (at least 3 times): the median."""
    out = []
    end = time.monotonic() + RUN_S
    while len(out) < 3 or time.monotonic() < end:
        out.append(fn())
    return statistics.median(out)


def run_isprime(pp, status, n):
    s = pp.Server(status_port=0 if status else None)
    s.submit(isprime, (2,), (), ("math",))()
    poller = start_poller([s.status_url]) if status else None
    if poller:
        time.sleep(0.3)  # polling already going when the clock starts

    def batch():
        t0 = common.now()
        jobs = [s.submit(isprime, (i,), (), ("math",)) for i in range(2, n)]
        primes = [j for j in jobs if j() is True]
        t = common.now() - t0
        if len(primes) != {2000: 303, 10000: 1229}[n]:
            raise RuntimeError("wrong isprime result")
        return t
    t = batches(batch)
    if poller:
        stop(poller)
    s.destroy()
    return t


def run_remote(pp, status, n):
    port, secret = common.free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "pp.ppserver", "-i", "127.0.0.1", "-p", str(port), "-w", "2",
           "-s", secret, "-t", "120"]
    sport = common.free_port()
    if status:
        cmd += ["--status-port", str(sport)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    common.register_node(proc)
    if common.wait_port(port, proc, 20):
        raise RuntimeError("ppserver did not start")
    s = pp.Server(ncpus=0, ppservers=("127.0.0.1:%d" % port,), secret=secret,
                  status_port=0 if status else None)
    [j() for j in [s.submit(tiny, (i,)) for i in range(200)]]  # warm-up
    poller = start_poller([s.status_url, "http://127.0.0.1:%d/" % sport]) if status else None
    if poller:
        time.sleep(0.3)

    def batch():
        return n / common.time_tiny(s, tiny, n)
    rate = batches(batch)
    if poller:
        stop(poller)
    s.destroy()
    proc.terminate()
    proc.wait()
    return rate


def main(args):
    if args.impl != "ppc":
        raise ValueError("status has only a ppc variant")
    pp = common.import_pp(args.impl)
    extra = common.pp_info(pp)
    pairs = 2 if args.quick else 4
    n_isprime = 2000 if args.quick else 10000
    n_remote = 2000 if args.quick else 10000
    side = {"isprime_off": [], "isprime_on": [], "remote_off": [], "remote_on": []}
    for k in range(pairs):
        for status in ((False, True) if k % 2 == 0 else (True, False)):
            common.PHASE[0] = "isprime status=%s" % status
            side["isprime_" + ("on" if status else "off")].append(run_isprime(pp, status, n_isprime))
            common.PHASE[0] = "remote status=%s" % status
            side["remote_" + ("on" if status else "off")].append(run_remote(pp, status, n_remote))
    med = {k: statistics.median(v) for k, v in side.items()}
    loss_isprime = med["isprime_on"] / med["isprime_off"] - 1.0   # time: higher is worse
    loss_remote = med["remote_off"] / med["remote_on"] - 1.0     # jobs/s: lower is worse
    extra.update(side)
    extra.update({"median_" + k: v for k, v in med.items()})
    extra.update(loss_isprime=loss_isprime, loss_remote=loss_remote,
                 value=max(loss_isprime, loss_remote), unit="loss")
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
