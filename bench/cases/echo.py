# bench/cases/echo.py - case 3: 4 x 64 MB payloads echoed through workers
# (def echo(x): return x). --case echo_bytes uses bytes objects, echo_numpy
# float64 arrays; echo_numpy_new float64 arrays and a job that returns a new
# array (def plus1(x): return x + 1), so a result that is its own argument
# is never the only numpy figure. After the pool is made and warmed, 4 jobs
# are submitted, then all results taken; reported as payload MB moved one way per second
# (4 * 64 MB / time from first submit to last result).
#
# Implementations: mp (multiprocessing.Pool.apply_async), ppe
# (concurrent.futures.ProcessPoolExecutor.submit), ray (a local single-node
# Ray started by ray.init(num_cpus=nproc) before the clock, as its users
# do: each payload ray.put into its shared-memory object store, then
# echo.remote(ref), results by ray.get), ppft and ppc (pp.Server.submit),
# ppc_novm (ppc with PPC_VM=0 in the environment: the run a kernel that
# refuses cross-process reads gets). serial is the in-process pickle round
# trip (dumps+loads, protocol 5) of the same payloads: the serialization
# cost alone, nothing moves.
#
# Limit rows: bare processes (forked, no framework) doing only the fills of
# fresh memory that any design must do for this data, spread evenly over N
# = nproc processes (at best a design spreads them over every core: a
# client may copy with threads, or a worker write into it); payload i is
# handled by process i mod N. The fork shares the payloads, which stands
# for reading them from the other process. A fill is a fresh mapping, its
# pages faulted in with one madvise, then a memcpy. Timed from a common
# start signal to the last process done (forks and exits not counted).
#   echo_bytes --impl limit: results copied once, cross-process reads
#     allowed: 2 fills per payload, the worker's argument (read from the
#     client's memory) and the client's result (read from the worker's).
#   echo_bytes --impl limit_novm: reads refused: 3 fills and a copy per
#     payload: the client's argument into a shared segment, the worker's
#     argument from it, the worker's result back into that segment
#     (already populated: a memcpy only), the client's result from it.
#   echo_numpy --impl limit: 1 fill per payload, the argument's pages in
#     the receiver (a worker, into a fresh memfd segment), and nothing for
#     the result: the client maps that segment copy-on-write (fd passed
#     over a unix socket) and wraps it as a writable array.
import mmap
import os
import pickle
import socket

import common

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
RAY_STORE_MB = int(os.environ.get("BENCH_RAY_STORE_MB", "2048"))


def raw(p):
    """The payload's bytes as a flat buffer (bytes, or a numpy array's data)."""
    return p if isinstance(p, bytes) else memoryview(p).cast("B")


def populate(m):
    try:
        m.madvise(MADV_POPULATE_WRITE)
    except (OSError, ValueError):
        pass  # an older kernel: the copy faults the pages in


def fill_private(src):
    """A fresh private mapping holding a copy of src (one fill)."""
    m = mmap.mmap(-1, len(src))
    populate(m)
    m[:] = src
    return m


def fill_segment(src):
    """A fresh shared-memory (memfd) segment holding a copy of src (one
    fill); returns (fd, mapping)."""
    fd = os.memfd_create("bench-seg")
    os.ftruncate(fd, len(src))
    m = mmap.mmap(fd, len(src))
    populate(m)
    m[:] = src
    return fd, m


def fork_workers(nproc, body):
    """Fork nproc children running body(k) (k = 0..nproc-1); each exits 0 if
    body returns, 1 on any exception."""
    kids = []
    for k in range(nproc):
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                body(k)
                ok = True
            finally:
                os._exit(0 if ok else 1)
        kids.append(pid)
    return kids


def reap(kids):
    bad = 0
    for pid in kids:
        _, st = os.waitpid(pid, 0)
        bad += st != 0
    if bad:
        raise RuntimeError("%d limit worker(s) failed" % bad)


def limit_bytes(payloads, nproc, refused):
    """The fills of a bytes echo whose results are copied once (see the top
    comment), payload i in process i mod nproc. Returns (seconds, a check
    that every copy holds the payload)."""
    n = len(payloads)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()

    def chain(p):
        if not refused:
            arg = fill_private(p)          # the worker's argument
            res = fill_private(arg)        # the client's result
            return [arg, res]
        fd, seg = fill_segment(p)          # the client's argument, into shared memory
        os.close(fd)
        arg = fill_private(seg)            # the worker's argument, from the segment
        seg[:] = arg                       # its result, back into the segment
        res = fill_private(seg)            # the client's result, from the segment
        return [seg, arg, res]

    def worker(k):
        os.read(go_r, 1)
        ok = True
        for i in range(k, n, nproc):
            p = payloads[i]
            ok = all(m[:16] == p[:16] and m[-16:] == p[-16:] for m in chain(p)) and ok
        os.write(done_w, b"y" if ok else b"n")

    kids = fork_workers(nproc, worker)
    t0 = common.now()
    os.write(go_w, b"g" * nproc)
    ok = True
    for _ in range(nproc):
        ok = os.read(done_r, 1) == b"y" and ok
    t = common.now() - t0
    reap(kids)
    for fd in (go_r, go_w, done_r, done_w):
        os.close(fd)
    if not ok:
        raise RuntimeError("a limit process copied wrong bytes")
    return t


def limit_numpy(payloads, nproc):
    """One fill per payload, in a worker; results mapped (see top comment).
    Returns (seconds, results: writable arrays over copy-on-write maps)."""
    import numpy as np
    n = len(payloads)
    go_r, go_w = os.pipe()
    end_r, end_w = os.pipe()
    csock, wsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def worker(k):
        csock.close()
        os.read(go_r, 1)
        keep = []
        for i in range(k, n, nproc):
            fd, m = fill_segment(raw(payloads[i]))    # the argument, in the worker
            socket.send_fds(wsock, [bytes([i])], [fd])
            keep.append((fd, m))
        os.read(end_r, 1)                             # live until the client is done

    kids = fork_workers(nproc, worker)
    wsock.close()
    t0 = common.now()
    os.write(go_w, b"g" * nproc)
    out = [None] * n
    for _ in range(n):
        msg, fds, _, _ = socket.recv_fds(csock, 16, 1)
        i = msg[0]
        p = payloads[i]
        m = mmap.mmap(fds[0], p.nbytes, flags=mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fds[0])
        out[i] = np.frombuffer(m, dtype=p.dtype).reshape(p.shape)   # the result
    t = common.now() - t0
    os.write(end_w, b"e" * nproc)
    reap(kids)
    for fd in (go_r, go_w, end_r, end_w):
        os.close(fd)
    csock.close()
    return t, out


def echo(x):
    return x


def plus1(x):
    return x + 1


def make_payloads(kind, n, size):
    if kind == "echo_bytes":
        return [os.urandom(size) for _ in range(n)]
    import numpy as np
    return [np.random.default_rng(i).random(size // 8) for i in range(n)]


def same(kind, a, b):
    if kind == "echo_bytes":
        return a == b
    import numpy as np
    want = a + 1 if kind == "echo_numpy_new" else a
    return isinstance(b, np.ndarray) and b.dtype == a.dtype and np.array_equal(want, b)


def main(args):
    impl, kind = args.impl, args.case
    n = 4
    mb = 8 if args.quick else 64
    nproc = common.ncpus()
    common.PHASE[0] = "make payloads"
    payloads = make_payloads(kind, n, mb * 1024 * 1024)
    job = plus1 if kind == "echo_numpy_new" else echo
    extra = {}
    if impl in ("limit", "limit_novm"):
        common.PHASE[0] = "run"
        if kind != "echo_bytes":
            if impl != "limit" or kind != "echo_numpy":
                raise ValueError("%s has no %s row" % (kind, impl))
            t, out = limit_numpy(payloads, nproc)
        else:
            t = limit_bytes(payloads, nproc, refused=impl == "limit_novm")
            out = payloads                  # checked in the limit processes
    elif impl == "serial":
        common.PHASE[0] = "run"
        t0 = common.now()
        out = [pickle.loads(pickle.dumps(job(p), protocol=5)) for p in payloads]
        t = common.now() - t0
    elif impl == "mp":
        import multiprocessing
        common.PHASE[0] = "pool"
        pool = multiprocessing.Pool()
        pool.apply_async(echo, (1,)).get()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [pool.apply_async(job, (p,)) for p in payloads]
        out = [j.get() for j in jobs]
        t = common.now() - t0
    elif impl == "ppe":
        from concurrent.futures import ProcessPoolExecutor
        common.PHASE[0] = "pool"
        ex = ProcessPoolExecutor()
        # it starts its processes on demand: warm all of them
        [f.result() for f in [ex.submit(echo, i) for i in range(nproc)]]
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [ex.submit(job, p) for p in payloads]
        out = [j.result() for j in jobs]
        t = common.now() - t0
    elif impl == "ray":
        import ray
        common.PHASE[0] = "ray.init"
        ray.init(num_cpus=nproc, object_store_memory=RAY_STORE_MB * 2**20,
                 include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        echo_r = ray.remote(job)
        ray.get([echo_r.remote(i) for i in range(nproc)])
        extra["ray_version"] = ray.__version__
        common.PHASE[0] = "run"
        t0 = common.now()
        refs = [echo_r.remote(ray.put(p)) for p in payloads]
        out = ray.get(refs)
        t = common.now() - t0
    else:
        pp = common.import_pp(impl)
        extra.update(common.pp_info(pp))
        common.PHASE[0] = "pp.Server()"
        job_server = pp.Server()
        job_server.submit(job, (1,))()
        common.PHASE[0] = "run"
        t0 = common.now()
        jobs = [job_server.submit(job, (p,)) for p in payloads]
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
