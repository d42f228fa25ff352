"""The local worker pool and the server as a whole, through real processes.

Covers: set_ncpus growing and shrinking the pool while jobs run (results
stay right; the distinct worker pids the jobs report and
server._worker_pids() follow the new size); restart=True (a fresh worker
per job); workers seeing the client's sys.path and working directory
(a module that exists only on a path the client added imports in jobs);
one Server used from several Python threads at once; large arguments and
results (16 MB of bytes, a million-element list); Ctrl-C in the main thread
waiting on job() interrupting it promptly and leaving the server usable
(child script + SIGINT); the "pp" logger receiving messages; the server
destroyed at interpreter exit without an explicit destroy(); a worker that
closes its pipes and exits later reported with its real exit status.
"""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pp
from conftest import assert_nothing_pending
import helpers_mod as H


# --------------------------------------------------------------- set_ncpus while jobs run

@pytest.mark.timeout(60)
def test_set_ncpus_grow_while_running(fresh_server, wait_until):
    s = fresh_server(ncpus=1)
    assert wait_until(lambda: len(s._worker_pids()) == 1)
    first = s._worker_pids()[0]
    jobs = [s.submit(H.pid_after, (0.2,)) for _ in range(12)]
    time.sleep(0.1)  # the first job is running on the only worker
    s.set_ncpus(3)
    assert s.get_ncpus() == 3
    pids = [j() for j in jobs]
    assert len(pids) == 12
    assert first in pids
    assert 2 <= len(set(pids)) <= 3  # the new workers took queued jobs
    assert wait_until(lambda: len(s._worker_pids()) == 3)
    live = set(s._worker_pids())
    assert set(pids) <= live
    assert s.get_active_nodes() == {"local": 3}
    assert s.get_stats()["local"].ncpus == 3


@pytest.mark.timeout(60)
def test_set_ncpus_shrink_while_running(fresh_server, wait_until):
    s = fresh_server(ncpus=3)
    assert wait_until(lambda: len(s._worker_pids()) == 3)
    before = set(s._worker_pids())
    jobs = [s.submit(H.pid_after, (0.15,)) for _ in range(9)]
    time.sleep(0.05)
    s.set_ncpus(1)
    assert s.get_ncpus() == 1
    pids = [j() for j in jobs]  # every job completes, none is lost
    assert len(pids) == 9 and set(pids) <= before
    assert wait_until(lambda: len(s._worker_pids()) == 1)
    (left,) = s._worker_pids()
    later = {s.submit(H.pid_after, (0.01,))() for _ in range(6)}
    assert later == {left}
    assert s.get_active_nodes() == {"local": 1}


@pytest.mark.timeout(60)
def test_set_ncpus_grow_then_shrink_results_correct(fresh_server, wait_until):
    s = fresh_server(ncpus=1)
    jobs = []
    for n in (2, 4, 1, 3, 2):
        jobs += [s.submit(H.square, (len(jobs) + i,)) for i in range(50)]
        s.set_ncpus(n)
    assert [j() for j in jobs] == [i * i for i in range(len(jobs))]
    assert s.get_ncpus() == 2
    assert wait_until(lambda: len(s._worker_pids()) == 2)


@pytest.mark.timeout(60)
def test_set_ncpus_pids_follow(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    for n in (4, 2, 1, 3):
        s.set_ncpus(n)
        assert wait_until(lambda: len(s._worker_pids()) == n), (n, s._worker_pids())
        # n concurrent jobs, each long enough to keep its worker busy:
        # they land on n distinct workers, all among the live ones
        pids = {j() for j in [s.submit(H.pid_after, (0.3,)) for _ in range(n)]}
        assert pids <= set(s._worker_pids())
        assert len(pids) == n


# --------------------------------------------------------------- restart=True

@pytest.mark.timeout(60)
def test_restart_gives_fresh_worker_per_job(fresh_server):
    s = fresh_server(ncpus=2, restart=True)
    pids = [s.submit(H.getpid)() for _ in range(5)]  # sequentially
    assert len(set(pids)) == 5
    assert os.getpid() not in pids


@pytest.mark.timeout(60)
def test_restart_batch(fresh_server, wait_until):
    s = fresh_server(ncpus=2, restart=True)
    jobs = [s.submit(H.pid_after, (0.01,)) for _ in range(8)]
    pids = [j() for j in jobs]
    assert len(set(pids)) == 8
    assert wait_until(lambda: len(s._worker_pids()) == 2)
    assert not set(pids) & set(s._worker_pids())


@pytest.mark.timeout(60)
def test_restart_state_does_not_leak_between_jobs(fresh_server):
    s = fresh_server(ncpus=1, restart=True)

    def set_flag():
        import builtins
        seen = getattr(builtins, "_pp_test_flag", False)
        builtins._pp_test_flag = True
        return seen

    assert [s.submit(set_flag)() for _ in range(3)] == [False, False, False]


# --------------------------------------------------------------- environment of workers

@pytest.mark.timeout(60)
def test_workers_see_client_sys_path_and_cwd(tmp_path, monkeypatch):
    extra = tmp_path / "extra_path_dir"
    extra.mkdir()
    (extra / "only_on_client_path_mod.py").write_text("def hello():\n    return 'hello from extra'\n")
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.syspath_prepend(str(extra))
    monkeypatch.chdir(workdir)
    s = pp.Server(ncpus=2)
    try:
        cwd, path = s.submit(H.cwd_and_path)()
        assert os.path.realpath(cwd) == os.path.realpath(str(workdir))
        assert str(extra) in path
        assert path.index(str(extra)) < len(path) // 2 + 1  # kept near the front
        assert s.submit(H.import_and_call, ("only_on_client_path_mod", "hello"))() == \
            "hello from extra"
        # relative file access happens in the client's directory
        (workdir / "data.txt").write_text("payload")
        assert s.submit(lambda: open("data.txt").read())() == "payload"
    finally:
        s.destroy()


# --------------------------------------------------------------- threads

@pytest.mark.timeout(90)
def test_one_server_many_threads(server):
    errors = []
    results = {}

    def worker(t):
        try:
            jobs = [(i, server.submit(H.add, (t * 1000, i))) for i in range(200)]
            results[t] = [(i, j()) for i, j in jobs]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]
    for t, pairs in results.items():
        assert pairs == [(i, t * 1000 + i) for i in range(200)]
    assert_nothing_pending(server)


@pytest.mark.timeout(90)
def test_threads_with_callbacks_and_groups(server):
    got = {t: [] for t in range(4)}

    def worker(t):
        for i in range(100):
            server.submit(H.square, (i,), callback=got[t].append, group="thread-%d" % t)
        server.wait("thread-%d" % t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for t in range(4):
        assert sorted(got[t]) == [i * i for i in range(100)]


# --------------------------------------------------------------- large data

@pytest.mark.timeout(90)
def test_large_bytes_round_trip(server):
    data = os.urandom(16 * 1024 * 1024)
    back = server.submit(H.identity, (data,))()
    assert type(back) is bytes
    assert back == data


@pytest.mark.timeout(90)
def test_large_list_round_trip(server):
    data = list(range(1000000))
    assert server.submit(H.identity, (data,))() == data
    assert server.submit(H.length_and_sum, (data,))() == (1000000, sum(data))


@pytest.mark.timeout(90)
def test_large_results_from_several_jobs(server):
    jobs = [server.submit(bytes, (4 * 1024 * 1024,)) for _ in range(6)]
    for j in jobs:
        r = j()
        assert len(r) == 4 * 1024 * 1024 and not any(r[::4096])


# --------------------------------------------------------------- Ctrl-C

CTRL_C_SCRIPT = """
import sys
import time
import pp

s = pp.Server(2)
assert s.submit(pow, (2, 2))() == 4
job = s.submit(time.sleep, (30,))
print("waiting", flush=True)
t0 = time.time()
try:
    job()
    print("not interrupted", flush=True)
except KeyboardInterrupt:
    print("interrupted after %.1f" % (time.time() - t0), flush=True)
print("result", s.submit(pow, (2, 10))(), flush=True)
"""


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_job_wait(tmp_path, child_env):
    script = tmp_path / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path), env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert "interrupted after" in out, (out, err)
    assert "result 1024" in out, (out, err)
    assert elapsed < 20  # not the 30 s of the job


# --------------------------------------------------------------- logging and exit

def test_pp_logger_gets_messages(caplog, fresh_server):
    caplog.set_level(logging.DEBUG, logger="pp")
    s = fresh_server(ncpus=1)
    assert s.submit(H.square, (2,))() == 4
    assert any(r.name == "pp" for r in caplog.records), caplog.text


def test_server_without_destroy_exits_cleanly(run_python, ok):
    out = ok(run_python("""
        import os
        import pp
        s = pp.Server(2)
        print(s.submit(pow, (3, 3))())
        print(" ".join(str(p) for p in s._worker_pids()))
        # no destroy(): the server is stopped at exit, workers go away
    """, timeout=30))
    lines = out.splitlines()
    assert lines[0] == "27"
    pids = [int(p) for p in lines[1].split()]
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not alive


def test_pending_jobs_at_exit_do_not_hang(run_python, ok):
    out = ok(run_python("""
        import time
        import pp
        s = pp.Server(1)
        for _ in range(3):
            s.submit(time.sleep, (30,))
        print("exiting")
    """, timeout=30))
    assert out.strip() == "exiting"


@pytest.mark.timeout(60)
def test_jobs_queued_while_every_worker_is_busy_start_on_growth(fresh_server, tmp_path,
                                                                 wait_until):
    # The only worker is held by a job that waits for a file. Jobs submitted
    # now cannot be placed (the engine sleeps without being woken by each
    # submit); set_ncpus must still wake it, and the new worker runs them
    # while the first job is still holding its worker.
    s = fresh_server(ncpus=1)
    release, started = tmp_path / "release", tmp_path / "started"
    held = s.submit(H.wait_for_file, (str(release), 50.0, str(started)))
    assert wait_until(started.exists)
    quick = [s.submit(H.square, (i,)) for i in range(50)]
    time.sleep(0.3)
    assert not any(j.finished for j in quick)
    s.set_ncpus(2)
    assert [j() for j in quick] == [i * i for i in range(50)]
    assert not held.finished
    release.write_text("go")
    assert held()[1] is True
    # and a submit while saturated, released later, still runs
    release.unlink()
    started.unlink()
    held = [s.submit(H.wait_for_file, (str(release), 50.0, str(started))) for _ in range(2)]
    late = s.submit(H.square, (7,))
    time.sleep(0.3)
    assert not late.finished
    release.write_text("go")
    assert late() == 49
    assert all(h()[1] is True for h in held)


@pytest.mark.timeout(60)
def test_worker_that_closes_its_pipes_then_exits_is_reaped_with_its_status(run_python, ok):
    # The engine learns of the death by EOF on the pipe, but the process
    # exits only later: it is reaped when it does (its pidfd, watched by the
    # engine's loop), so the job's error names its real exit code, and the
    # other worker's jobs keep flowing meanwhile.
    out = ok(run_python("""
        import os, time
        import pp

        def close_pipes_then_exit(code):
            import os, time
            os.close(3)
            os.close(4)
            time.sleep(0.3)
            os._exit(code)

        s = pp.Server(2)
        bad = s.submit(close_pipes_then_exit, (7,))
        good = [s.submit(pow, (i, 2)) for i in range(50)]
        print(sum(j() for j in good))
        try:
            bad()
            print("no error")
        except pp.WorkerError as e:
            print("WorkerError:", e)
        print(s.submit(abs, (-4,))())
        s.destroy()
    """, timeout=50))
    lines = out.splitlines()
    assert lines[0] == str(sum(i * i for i in range(50)))
    assert lines[1].startswith("WorkerError:") and "exit code 7" in lines[1], lines[1]
    assert lines[2] == "4"
