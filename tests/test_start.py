"""How a Server's workers start: the first ones are forks of the client
when the process is single-threaded at construction, every other one (a
replacement, growth, restart=True, a process with other threads running,
PPC_START=spawn) is a fresh interpreter. Both kinds must behave the same:
shipped code runs in a fresh __main__, the client's sys.path and working
directory apply, workers sit in their own process group with SIGINT
ignored, and dead ones are reaped and replaced.

Every check runs in a child interpreter, so that this process's own
threads (pytest, other tests' servers) do not decide the start mode.
"""
import subprocess
import sys
import textwrap

import pytest

from conftest import SCRIPT_HELPERS, check_ok, child_env, run_script

PRELUDE = '''
import os, signal, sys, time, threading
import pp

def proc_info(pid):
    """(parent pid, process group, cmdline bytes, SIGINT ignored?)"""
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    rest = st[st.rindex(")") + 2:].split()
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        cmd = f.read()
    ign = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigIgn:"):
                ign = int(line.split()[1], 16)
    return int(rest[1]), int(rest[2]), cmd, bool(ign & (1 << (signal.SIGINT - 1)))

with open("/proc/self/cmdline", "rb") as f:
    MY_CMD = f.read()

def forked(pid):
    ppid, pgid, cmd, _ = proc_info(pid)
    return ppid == os.getpid() and cmd == MY_CMD

def fresh(pid):
    ppid, pgid, cmd, _ = proc_info(pid)
    return ppid == os.getpid() and cmd != MY_CMD and b"_ppcw" in cmd

''' + SCRIPT_HELPERS + '''
'''


def run(body, env_extra=None, timeout=60, tmp_path=None):
    return run_script(PRELUDE + textwrap.dedent(body), tmp_path, timeout, env_extra,
                      env_drop=("PPC_START",))


def test_first_workers_are_forks_of_a_single_threaded_client(tmp_path):
    out = check_ok(run('''
        s = pp.Server(2)
        assert s._forked_workers == 2, s._forked_workers
        pids = s._worker_pids()
        assert len(pids) == 2
        for pid in pids:
            ppid, pgid, cmd, _ = proc_info(pid)
            assert forked(pid), (pid, cmd, MY_CMD)
            assert pgid != os.getpgrp() and pgid == pid   # own process group
            # (the child sets up the rest itself, a moment after the fork)
            assert wait_until(lambda: proc_info(pid)[3])  # SIGINT ignored
            # only its pipes and stdio: nothing of the client's is inherited
            assert wait_until(lambda: sorted(os.listdir("/proc/%d/fd" % pid)) ==
                              ["0", "1", "2", "3", "4"]), os.listdir("/proc/%d/fd" % pid)
            assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
        got = {s.submit(os.getpid)() for _ in range(20)}
        assert got <= set(pids), (got, pids)
        print(sum(s.submit(pow, (i, 2))() for i in range(100)))
        s.destroy()
    ''', tmp_path=tmp_path))
    assert out.split() == [str(sum(i * i for i in range(100)))]


def test_another_thread_running_means_fresh_interpreters(tmp_path):
    out = check_ok(run('''
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        s = pp.Server(2)
        assert s._forked_workers == 0
        assert wait_until(lambda: len(s._worker_pids()) == 2)
        for pid in s._worker_pids():
            assert fresh(pid), proc_info(pid)
            assert proc_info(pid)[1] != os.getpgrp()
        print(s.submit(abs, (-5,))())
        s.destroy()
        stop.set()
        t.join()
    ''', tmp_path=tmp_path))
    assert out.split() == ["5"]


def test_ppc_start_spawn_forces_fresh_interpreters(tmp_path):
    out = check_ok(run('''
        s = pp.Server(2)
        assert s._forked_workers == 0
        assert wait_until(lambda: len(s._worker_pids()) == 2)
        assert all(fresh(pid) for pid in s._worker_pids())
        print(s.submit(abs, (-5,))())
        s.destroy()
    ''', env_extra={"PPC_START": "spawn"}, tmp_path=tmp_path))
    assert out.split() == ["5"]


def test_ppc_start_unknown_value_is_an_error(tmp_path):
    out = check_ok(run('''
        try:
            pp.Server(1)
        except ValueError as e:
            print("ValueError", e)
    ''', env_extra={"PPC_START": "sometimes"}, tmp_path=tmp_path))
    assert "ValueError" in out and "PPC_START" in out


def test_several_servers_in_one_process(tmp_path):
    out = check_ok(run('''
        a = pp.Server(2)
        b = pp.Server(2)      # a's engine thread runs: b's workers are spawned
        assert a._forked_workers == 2 and b._forked_workers == 0
        assert all(forked(p) for p in a._worker_pids())
        assert wait_until(lambda: len(b._worker_pids()) == 2)
        assert all(fresh(p) for p in b._worker_pids())
        ja = [a.submit(pow, (i, 2)) for i in range(50)]
        jb = [b.submit(pow, (i, 3)) for i in range(50)]
        print(sum(j() for j in ja), sum(j() for j in jb))
        a.destroy()
        print(b.submit(abs, (-1,))())
        b.destroy()
    ''', tmp_path=tmp_path))
    assert out.split() == [str(sum(i * i for i in range(50))),
                           str(sum(i ** 3 for i in range(50))), "1"]


def test_forked_workers_replaced_after_exit_and_kill(tmp_path):
    out = check_ok(run('''
        s = pp.Server(2)
        first = s._worker_pids()
        assert s._forked_workers == 2 and all(forked(p) for p in first)
        try:
            s.submit(os._exit, (3,))()
        except pp.WorkerError as e:
            print("WorkerError", "exit code 3" in str(e))
        survivors = [p for p in first if p in s._worker_pids()]
        assert wait_until(lambda: len(s._worker_pids()) == 2)
        for p in survivors:
            os.kill(p, signal.SIGKILL)
        assert wait_until(lambda: len(s._worker_pids()) == 2 and
                          not set(first) & set(s._worker_pids()))
        # the dead forked workers were reaped by the engine (no zombies)
        for p in first:
            try:
                os.waitpid(p, os.WNOHANG)
                print("not reaped", p)
            except ChildProcessError:
                pass
        # replacements are fresh interpreters, and they work
        assert all(fresh(p) for p in s._worker_pids()), [proc_info(p) for p in s._worker_pids()]
        print(sum(s.submit(pow, (i, 2))() for i in range(100)))
        s.destroy()
    ''', tmp_path=tmp_path))
    assert out.split() == ["WorkerError", "True", str(sum(i * i for i in range(100)))]


def test_restart_true_with_forked_first_workers(tmp_path):
    out = check_ok(run('''
        s = pp.Server(2, restart=True)
        assert s._forked_workers == 2
        pids = [s.submit(os.getpid)() for _ in range(6)]
        print(len(set(pids)))          # a fresh process for every job
        print(sum(s.submit(pow, (i, 2))() for i in range(10)))
        s.destroy()
    ''', tmp_path=tmp_path))
    assert out.split() == ["6", str(sum(i * i for i in range(10)))]


@pytest.mark.parametrize("mode", ["auto", "spawn"])
def test_unshipped_globals_are_name_errors_in_both_modes(tmp_path, mode):
    out = check_ok(run('''
        import math
        LIMIT = 7

        def uses_math(x):
            return math.sqrt(x)

        def uses_global(x):
            return x + LIMIT

        s = pp.Server(1)
        print("forked", s._forked_workers)
        for f in (uses_math, uses_global):
            try:
                s.submit(f, (16,))()
            except NameError as e:
                print("NameError", str(e).split("'")[1])
        print(s.submit(uses_math, (16,), modules=("math",))())
        # what earlier functions installed is there (as in pp), but nothing
        # of the client's __main__
        print(s.submit(lambda: sorted(k for k in globals() if not k.startswith("__")))())
        print(s.submit(lambda: __name__)())
        s.destroy()
    ''', env_extra={"PPC_START": mode}, tmp_path=tmp_path))
    lines = out.splitlines()
    assert lines[0] == "forked %d" % (1 if mode == "auto" else 0)
    assert lines[1:] == ["NameError math", "NameError LIMIT", "4.0",
                         "['math', 'uses_global', 'uses_math']", "__main__"]


@pytest.mark.parametrize("mode", ["auto", "spawn"])
def test_sys_path_and_cwd_in_both_modes(tmp_path, mode):
    (tmp_path / "work").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "startmod_xyz.py").write_text("def where():\n    import os\n    return os.getcwd()\n")
    out = check_ok(run('''
        os.chdir("work")
        sys.path.insert(0, os.path.abspath("../lib"))
        s = pp.Server(1)
        print("forked", s._forked_workers)
        import startmod_xyz
        print(s.submit(startmod_xyz.where)() == os.getcwd())
        print(s.submit(lambda: sys.path[0], modules=("sys",))() == sys.path[0])
        s.destroy()
    ''', env_extra={"PPC_START": mode}, tmp_path=tmp_path))
    assert out.split() == ["forked", "1" if mode == "auto" else "0", "True", "True"]


def test_client_output_is_not_repeated_by_forked_workers(tmp_path):
    # stdout a pipe and buffered: what the client printed before the fork
    # must come out once, not once more per worker
    env = child_env()
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("PPC_START", None)
    src = textwrap.dedent('''
        import sys, pp
        print("before-server")
        sys.stderr.write("err-before\\n")
        s = pp.Server(2)
        assert s._forked_workers == 2
        print(s.submit(abs, (-3,))())
        s.destroy()
        print("after")
    ''')
    p = subprocess.run([sys.executable, "-c", src], env=env, capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path))
    check_ok(p)
    assert p.stdout.split() == ["before-server", "3", "after"]
    assert p.stderr.count("err-before") == 1


def test_ctrl_c_to_the_clients_group_spares_forked_workers(tmp_path):
    # a terminal's Ctrl-C goes to the foreground process group: the client
    # gets KeyboardInterrupt, its forked workers (own group) go on working
    env = child_env()
    env.pop("PPC_START", None)
    src = PRELUDE + textwrap.dedent('''
        s = pp.Server(2)
        assert s._forked_workers == 2
        pids = s._worker_pids()
        assert all(wait_until(lambda: proc_info(p)[3]) for p in pids)
        job = s.submit(time.sleep, (0.3,))
        try:
            os.killpg(os.getpgrp(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            print("interrupted")
        job()
        print(sorted(s._worker_pids()) == sorted(pids))
        print(s.submit(abs, (-2,))())
        s.destroy()
    ''')
    p = subprocess.run([sys.executable, "-c", src], env=env, capture_output=True, text=True,
                       timeout=60, cwd=str(tmp_path), start_new_session=True)
    check_ok(p)
    assert p.stdout.split() == ["interrupted", "True", "2"]
