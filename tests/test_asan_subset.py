"""A small, fast subset of the suite run against an AddressSanitizer +
UndefinedBehaviorSanitizer build of the extension (``make test-asan``).

Walks the C paths of the binding and the engine once each: submit and
results (functions by reference and by code object), an exception with
its remote traceback, an exception that cannot be pickled, argument
checking at submit, callbacks, output capture, a worker dying mid-job,
destroy with jobs pending, set_ncpus growing and shrinking while jobs run,
restart=True, several submitting threads, a 16 MB round trip, the
shared-memory paths (segments, out-of-band buffers, the pipe fallback) and
big bytes read in place across processes (and both fallbacks).

Self-contained on purpose: imports only pytest, pp and the standard
library, uses no helper module, and every job function is a builtin, a
stdlib function or a local function/lambda (shipped as a code object), so
the workers never import this file.
"""
import os
import threading
import time

import pytest

import pp


def _wait_until(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_running_against_the_sanitizer_build():
    # When the Makefile preloads ASan, the extension imported here (and so
    # the one the workers load, found next to it) must be the instrumented
    # build, not the plain in-place one that happens to sit in the current
    # directory.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("not an ASan run (LD_PRELOAD has no libasan)")
    import pp._ppc
    with open(pp._ppc.__file__, "rb") as f:
        assert b"__asan_init" in f.read(), pp._ppc.__file__ + " is not built with ASan"


@pytest.fixture(scope="module")
def srv():
    s = pp.Server(ncpus=2)
    yield s
    s.destroy()


@pytest.mark.timeout(120)
def test_submit_and_results(srv):
    assert srv.submit(pow, (2, 10))() == 1024
    assert srv.submit(lambda a, b: a * b, (6, 7))() == 42

    def add_n(n):
        return lambda x: x + n

    assert srv.submit(add_n(5), (1,))() == 6
    jobs = [srv.submit(divmod, (i, 7)) for i in range(300)]
    assert [j() for j in jobs] == [divmod(i, 7) for i in range(300)]
    assert srv.get_active_nodes() == {"local": 2}
    assert srv.get_stats()["local"].njobs >= 303


@pytest.mark.timeout(120)
def test_exception_with_remote_traceback(srv):
    def failing_job(x):
        raise ValueError("bad %s" % x)

    job = srv.submit(failing_job, ("input",))
    for _ in range(2):
        with pytest.raises(ValueError, match="bad input") as info:
            job()
        assert isinstance(info.value.__cause__, pp.RemoteTraceback)
        assert "failing_job" in str(info.value.__cause__)
    with pytest.raises(ValueError):
        srv.submit(int, ("not a number",))()


@pytest.mark.timeout(120)
def test_unpicklable_exception_is_remote_error(srv):
    def raise_with_lock():
        e = KeyError("held a lock")
        e.lock = threading.Lock()
        raise e

    with pytest.raises(pp.RemoteError) as info:
        srv.submit(raise_with_lock, modules=("threading",))()
    assert "KeyError" in str(info.value)
    assert "raise_with_lock" in str(info.value.__cause__)


@pytest.mark.timeout(120)
def test_submit_argument_errors(srv):
    with pytest.raises(TypeError, match="args argument must be a tuple"):
        srv.submit(pow, [2, 3])
    with pytest.raises(TypeError):
        srv.submit(pow, (2, 3), modules=(1,))
    with pytest.raises(TypeError):
        srv.submit(pow, (2, 3), globals=[])
    with pytest.raises(TypeError):
        srv.submit(len, (threading.Lock(),))
    # none of them left a job behind: wait() returns at once
    waiter = threading.Thread(target=srv.wait, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "wait() did not return: a job was left pending"


@pytest.mark.timeout(120)
def test_callbacks_and_output(srv, capsys):
    got, idents = [], set()

    def cb(tag, result):
        idents.add(threading.get_ident())
        got.append((tag, result))

    for i in range(20):
        srv.submit(pow, (i, 2), callback=cb, callbackargs=(i,))
    srv.wait()
    assert sorted(got) == [(i, i * i) for i in range(20)]
    assert len(idents) == 1 and threading.get_ident() not in idents

    def bad_cb(result):
        raise RuntimeError("callback failure")

    srv.submit(pow, (2, 2), callback=bad_cb)
    srv.wait()
    capsys.readouterr()
    job = srv.submit(print, ("printed by a job",))
    assert job() is None
    assert capsys.readouterr().out == "printed by a job\n"


@pytest.mark.timeout(120)
def test_worker_death():
    s = pp.Server(ncpus=2)
    try:
        def pid_after(t):
            time.sleep(t)
            return os.getpid()

        # let both workers start and answer first
        warm = [s.submit(pid_after, (0.3,), modules=("os", "time")) for _ in range(2)]
        assert len({j() for j in warm}) == 2
        with pytest.raises(pp.WorkerError, match="exit code 3"):
            s.submit(os._exit, (3,))()
        assert s.submit(pow, (3, 3))() == 27
        assert _wait_until(lambda: len(s._worker_pids()) == 2)
    finally:
        s.destroy()


@pytest.mark.timeout(120)
def test_destroy_with_pending_jobs():
    s = pp.Server(ncpus=1)
    got = []
    jobs = [s.submit(time.sleep, (30,)) for _ in range(3)]
    jobs.append(s.submit(time.sleep, (30,), callback=got.append))
    time.sleep(0.2)
    s.destroy()
    s.destroy()
    for j in jobs:
        with pytest.raises(pp.DestroyedServerError):
            j()
    with pytest.raises(pp.DestroyedServerError):
        s.submit(pow, (1, 1))
    assert got == []


@pytest.mark.timeout(120)
def test_set_ncpus_while_running():
    s = pp.Server(ncpus=1)
    try:
        jobs = [s.submit(time.sleep, (0.05,)) for _ in range(20)]
        s.set_ncpus(3)
        jobs += [s.submit(pow, (i, 2)) for i in range(50)]
        s.set_ncpus(1)
        results = [j() for j in jobs]
        assert results[20:] == [i * i for i in range(50)]
        assert s.get_ncpus() == 1
        assert _wait_until(lambda: len(s._worker_pids()) == 1)
    finally:
        s.destroy()


@pytest.mark.timeout(120)
def test_restart_and_threads():
    s = pp.Server(ncpus=2, restart=True)
    try:
        pids = [s.submit(os.getpid)() for _ in range(3)]
        assert len(set(pids)) == 3
    finally:
        s.destroy()

    s = pp.Server(ncpus=2)
    out, errors = {}, []

    def submitter(t):
        try:
            out[t] = [j() for j in [s.submit(pow, (t, i)) for i in range(50)]]
        except BaseException as e:  # reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors
        assert out == {t: [t ** i for i in range(50)] for t in range(3)}
    finally:
        s.destroy()


@pytest.mark.timeout(120)
def test_large_bytes(srv):
    data = os.urandom(16 * 1024 * 1024)
    assert srv.submit(bytes, (data,))() == data


def test_forked_first_workers():
    # a child interpreter (single-threaded, same sanitizer environment):
    # its first workers are forks running the worker loop of this build
    import subprocess
    import sys
    code = ("import os, pp\n"
            "s = pp.Server(2)\n"
            "assert s._forked_workers == 2, s._forked_workers\n"
            "try:\n"
            "    s.submit(os._exit, (3,))()\n"
            "except pp.WorkerError:\n"
            "    pass\n"
            "print(sum(s.submit(pow, (i, 2))() for i in range(50)))\n"
            "s.destroy()\n")
    env = dict(os.environ)
    env.pop("PPC_START", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pp.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(sum(i * i for i in range(50)))]


@pytest.mark.timeout(120)
def test_shared_memory_paths(srv):
    # bytearrays travel out of band (protocol 5): argument and result blobs
    # with several buffers, in segments, then again with /proc refused
    # (the pipe fallback) and with segments off
    parts = [bytearray(os.urandom(n)) for n in (3 << 20, 1 << 20, 100)]
    big = os.urandom(2 << 20)
    assert srv.submit(tuple, ((parts, big),))() == (parts, big)
    assert srv.submit(len, (big,))() == len(big)
    s = pp.Server(1, _test={"shm_refuse": True})
    try:
        assert s.submit(tuple, ((parts, big),))() == (parts, big)
    finally:
        s.destroy()
    s = pp.Server(1, _shm=False)
    try:
        assert s.submit(tuple, (parts,))() == tuple(parts)
    finally:
        s.destroy()


@pytest.mark.timeout(120)
def test_bytes_read_in_place(srv):
    # big bytes left as holes and read across processes (vm.c): arguments
    # and results in several shapes, a Job dropped before it ran, a worker
    # that may not read the client, a client that may not read its workers
    a, b = os.urandom(2 << 20), os.urandom(1 << 20)
    assert srv.submit(tuple, ((a, 5, b, a),))() == (a, 5, b, a)
    assert srv.submit(lambda d: {k: v[::-1] for k, v in d.items()}, ({"a": a, "b": b},))() == \
        {"a": a[::-1], "b": b[::-1]}
    before = srv._data_stats()
    nap = [srv.submit(lambda t: __import__("time").sleep(t), (0.5,)) for _ in range(2)]
    srv.submit(len, (os.urandom(3 << 20),))  # dropped at once, both workers busy
    assert srv._data_stats()["held"] >= 1
    [j() for j in nap]
    srv.wait()
    assert srv._data_stats()["arg_holes"] > before["arg_holes"]
    for test in ({"vm_refuse": True}, {"vm_noprobe": True},
                 {"vm_refuse": True, "vm_noprobe": True}):
        s = pp.Server(2, _test=test)
        try:
            assert [s.submit(bytes, (x,))() for x in (a, b, a)] == [a, b, a]
        finally:
            s.destroy()


def test_big_results_and_forks():
    # big bytes results copied from the workers, kept across a fork of the
    # client, and a fork inside a worker holding a big argument
    import gc
    import hashlib
    s = pp.Server(1)
    try:
        for _ in range(2):
            s.submit(lambda t: __import__("time").sleep(t), (0.02,))
        s.wait()
        rs = [s.submit(lambda n, c: bytes([c]) * n, (2 << 20, i))() for i in range(4)]
        assert [r == bytes([i]) * (2 << 20) for i, r in enumerate(rs)] == [True] * 4
        del rs[1:]
        gc.collect()

        want = hashlib.sha256(rs[0]).hexdigest()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if hashlib.sha256(rs[0]).hexdigest() == want else 1)
        del rs
        gc.collect()
        assert s.submit(lambda n: b"\xff" * n, (2 << 20,))() == b"\xff" * (2 << 20)
        _, st = os.waitpid(pid, 0)
        assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0

        def fork_here(big):
            import os
            import sys
            keep = bytes(big)
            n0 = sys.getrefcount(big)
            p = os.fork()
            if p == 0:
                os._exit(0 if big == keep else 1)
            return os.WEXITSTATUS(os.waitpid(p, 0)[1]), sys.getrefcount(big) - n0
        assert s.submit(fork_here, (os.urandom(2 << 20),))() == (0, 0)
    finally:
        s.destroy()


def test_futures_cancel_kill_timeout_retries_map_executor():
    """The futures paths: cancel while queued, kill while running, a
    timeout, retries after a worker death, done callbacks and await, map's
    chunks (per-item loop in C), an Executor's futures."""
    import asyncio
    import concurrent.futures as cf
    import itertools
    with pp.Server(2) as s:
        block = [s.submit(time.sleep, (0.5,)) for _ in range(2)]
        queued = [s.submit(abs, (-i,)) for i in range(20)]
        assert all(q.cancel() for q in queued[::2])
        victim = s.submit(time.sleep, (30,))
        assert _wait_until(victim.running)
        assert victim.kill()
        with pytest.raises(cf.CancelledError):
            victim.result(timeout=20)
        t = s.submit(time.sleep, (30,), timeout=0.3)
        with pytest.raises(TimeoutError):
            t.result(timeout=20)
        die = s.submit(os._exit, (3,), retries=2)
        with pytest.raises(pp.WorkerError):
            die.result(timeout=20)
        seen = []
        queued[1].add_done_callback(seen.append)
        assert [q.result(timeout=20) for q in queued[1::2]] == list(range(1, 20, 2))
        assert _wait_until(lambda: seen == [queued[1]])
        for b in block:
            b.result(timeout=20)

        async def main():
            return await asyncio.gather(*(s.submit(abs, (-i,)) for i in range(200)))
        assert asyncio.run(main()) == list(range(200))
        assert s.map(lambda x: x * 2, range(10000)) == [x * 2 for x in range(10000)]
        assert s.map(pow, range(5), itertools.repeat(2)) == [0, 1, 4, 9, 16]
        it = s.imap(abs, itertools.count())
        assert next(it) == 0
        it.close()
    with pp.Executor(2) as ex:
        fs = [ex.submit(abs, -i) for i in range(100)]
        assert sorted(f.result() for f in cf.as_completed(fs)) == list(range(100))
        assert ex.submit(int, "7", base=8).result() == 7
        assert list(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
