# bench/cases/echo.py - case 3: 4 x 64 MB payloads echoed through workers
# (def echo(x): return x). --case echo_bytes uses bytes objects, echo_numpy
# float64 arrays. 4 jobs submitted, then all results taken; reported as
# payload MB moved one way per second (4 * 64 MB / time). The serial column
# is the in-process pickle round trip (dumps+loads, protocol 5) of the same
# payloads: a reference for the serialization cost alone, nothing is moved.
# --impl bare is the machine's limit for any design that copies: an echo
# creates two new objects per payload (the argument in a worker, the result
# in the client), so bare has N forked processes (N = CPUs) fill 2 x 4 fresh
# 64 MB areas between them (anonymous memory, pages faulted in with one
# madvise, then a memcpy from a payload), with no framework, and reports
# 4 x 64 MB / that time. --impl bare_shm is the same for a design that
# never copies a result into the client (the client would map the worker's
# shared memory): 4 fresh shared-memory (memfd) areas filled.
import mmap
import os
import pickle

import common

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def fill_fresh(src, shared=False):
    if shared:
        fd = os.memfd_create("bench")
        os.ftruncate(fd, len(src))
        m = mmap.mmap(fd, len(src))
        os.close(fd)
    else:
        m = mmap.mmap(-1, len(src))
    try:
        m.madvise(MADV_POPULATE_WRITE)
    except OSError:
        pass  # an older kernel: the copy faults the pages in
    m[:] = src
    return m


def bare(payloads, nproc, shared=False):
    """2 fresh copies of every payload (1 into shared memory when shared),
    shared out between nproc forked processes; returns the time from a
    common start signal to the last process done filling (forks and exits
    are not counted)."""
    work = [p for p in payloads for _ in range(1 if shared else 2)]
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    kids = []
    for k in range(nproc):
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                os.read(go_r, 1)
                keep = [fill_fresh(work[i], shared) for i in range(k, len(work), nproc)]
                ok = all(m[:16] == work[k + nproc * j][:16] for j, m in enumerate(keep))
                os.write(done_w, b"y" if ok else b"n")
            finally:
                os._exit(0 if ok else 1)
        kids.append(pid)
    time_ok = True
    t0 = common.now()
    os.write(go_w, b"g" * nproc)
    for _ in range(nproc):
        time_ok = os.read(done_r, 1) == b"y" and time_ok
    t = common.now() - t0
    for pid in kids:
        os.waitpid(pid, 0)
    for fd in (go_r, go_w, done_r, done_w):
        os.close(fd)
    if not time_ok:
        raise RuntimeError("a bare filler failed")
    return t


def echo(x):
    return x


def make_payloads(kind, n, size):
    if kind == "echo_bytes":
        return [os.urandom(size) for _ in range(n)]
    import numpy as np
    return [np.random.default_rng(i).random(size // 8) for i in range(n)]


def same(kind, a, b):
    if kind == "echo_bytes":
        return a == b
    import numpy as np
    return isinstance(b, np.ndarray) and b.dtype == a.dtype and np.array_equal(a, b)


def main(args):
    impl, kind = args.impl, args.case
    n = 4
    mb = 8 if args.quick else 64
    common.PHASE[0] = "make payloads"
    payloads = make_payloads(kind, n, mb * 1024 * 1024)
    extra = {}
    if impl in ("bare", "bare_shm"):
        common.PHASE[0] = "run"
        t = bare(payloads, common.ncpus(), shared=impl == "bare_shm")
        out = payloads
    elif impl == "serial":
        common.PHASE[0] = "run"
        t0 = common.now()
        out = [pickle.loads(pickle.dumps(p, protocol=5)) for p in payloads]
        t = common.now() - t0
    elif impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()
        pool.apply_async(echo, (1,)).get()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [pool.apply_async(echo, (p,)) for p in payloads]
        out = [j.get() for j in jobs]
        t = common.now() - t0
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        job_server.submit(echo, (1,))()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [job_server.submit(echo, (p,)) for p in payloads]
        out = [j() for j in jobs]
        t = common.now() - t0
    common.PHASE[0] = "verify"
    for a, b in zip(payloads, out):
        if not same(kind, a, b):
            raise RuntimeError("echoed payload differs")
    extra.update(value=t, unit="s", payload_mb=n * mb, mb_per_s=n * mb / t)
    return extra


if __name__ == "__main__":
    common.run(main, common.parse_args())
