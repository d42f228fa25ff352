"""A Server's lifetime without destroy(): when its last reference goes, it
is freed as destroy() would stop it (engine and events threads end, its
workers exit and are reaped, its descriptors close).

Job objects the user still holds keep their Server alive: their results
can still be taken after the Server itself was dropped; the Server goes
when the last of them goes.

Each check runs in a child interpreter, so that counting the process's
threads, children and descriptors sees only what the check made.
"""
import textwrap

from conftest import check_ok, run_script

PRELUDE = '''
import gc, os, sys, time
import pp

def threads():
    return len(os.listdir("/proc/self/task"))

def children():
    kids = set()
    for t in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % t) as f:
                kids.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            pass
    return kids

def fds():
    return len(os.listdir("/proc/self/fd"))

def state():
    return threads(), len(children()), fds()

def settle(want, timeout=10):
    end = time.monotonic() + timeout
    while True:
        gc.collect()
        now = state()
        if now == want or time.monotonic() > end:
            return now
        time.sleep(0.02)

def square(x):
    return x * x

# what the first Server leaves for good (imported modules, logging)
s = pp.Server(1)
s.submit(square, (1,))()
s.destroy()
del s
base = settle((-1, -1, -1), 0.5)
'''


def run(body, tmp_path, timeout=90, env_extra=None):
    return run_script(PRELUDE + textwrap.dedent(body), tmp_path, timeout, env_extra)


def test_dropped_servers_are_freed(tmp_path):
    out = check_ok(run('''
        for i in range(5):
            s = pp.Server(1)
            assert s.submit(square, (i,))() == i * i
        del s
        after = settle(base)
        print(base, after)
        assert after == base, (base, after)
    ''', tmp_path))
    assert out.strip()


def test_dropped_servers_with_pending_jobs_are_freed(tmp_path):
    out = check_ok(run('''
        servers = []
        for i in range(5):
            s = pp.Server(2)
            for _ in range(4):
                s.submit(time.sleep, (30,))   # Job objects dropped at once
            servers.append(s)
        del s
        t = time.monotonic()
        del servers
        after = settle(base)
        took = time.monotonic() - t
        assert after == base, (base, after)
        print("%.2f" % took)
    ''', tmp_path))
    # busy workers are stopped, not waited for (SIGTERM, then SIGKILL after 1 s)
    assert float(out.split()[-1]) < 20


def test_held_job_keeps_its_server_alive(tmp_path):
    out = check_ok(run('''
        import weakref
        s = pp.Server(1)
        ref = weakref.ref(s)
        job = s.submit(square, (7,))
        del s
        gc.collect()
        assert ref() is not None
        print(job())
        del job
        after = settle(base)
        assert ref() is None
        assert after == base, (base, after)
    ''', tmp_path))
    assert out.split() == ["49"]


def test_callbacks_of_a_dropped_server_still_run(tmp_path):
    out = check_ok(run('''
        got = []
        s = pp.Server(2)
        for i in range(4):
            s.submit(square, (i,), callback=got.append)
        del s
        end = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < end:
            time.sleep(0.01)
        print(sorted(got))
        after = settle(base)
        assert after == base, (base, after)
    ''', tmp_path))
    assert out.strip() == "[0, 1, 4, 9]"
