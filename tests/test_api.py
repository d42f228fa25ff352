"""The public API of pp.Server as Parallel Python 1.6 / ppft define it.

Covers: module names (__version__, exceptions), Server construction and its
argument validation (TypeError / ValueError as pp), the context manager,
submit() and its argument checking, job objects (call, finished, wait, tid,
group), wait(group), get_ncpus / set_ncpus (values and validation),
get_active_nodes, get_stats, print_stats's format, destroy (twice is
harmless, everything after it fails clearly) and pp.Template.
"""
import math
import os
import pickle
import re
import time

import pytest

import pp
from conftest import assert_nothing_pending
import helpers_mod as H


def autodetected():
    return len(os.sched_getaffinity(0))


# --------------------------------------------------------------- module

def test_version_and_names():
    assert isinstance(pp.__version__, str)
    assert re.match(r"^\d+\.\d+(\.\d+)?", pp.__version__)
    assert pp.version == pp.__version__
    for name in ("Server", "Template", "DestroyedServerError", "WorkerError", "RemoteError",
                 "RemoteTraceback"):
        assert hasattr(pp, name), name
    for exc in (pp.DestroyedServerError, pp.WorkerError, pp.RemoteError, pp.RemoteTraceback):
        assert issubclass(exc, Exception)


# --------------------------------------------------------------- construction

def test_default_server_autodetects(fresh_server):
    s = fresh_server()
    assert s.get_ncpus() == autodetected()
    assert s.submit(H.square, (7,))() == 49


def test_server_keyword_arguments(fresh_server):
    s = fresh_server(ncpus=1, ppservers=(), secret=None, restart=False,
                     proto=pickle.HIGHEST_PROTOCOL, socket_timeout=3600,
                     raise_exceptions=True)
    assert s.get_ncpus() == 1
    assert s.submit(H.add, (2, 3))() == 5


def test_server_positional_arguments(fresh_server):
    s = fresh_server(1, (), None)
    assert s.get_ncpus() == 1
    assert s.submit(H.add, (2, 3))() == 5


def test_server_autodetect_string(fresh_server):
    s = fresh_server(ncpus="autodetect")
    assert s.get_ncpus() == autodetected()


def test_server_secret_string_accepted(fresh_server):
    s = fresh_server(ncpus=1, secret="s3cret")
    assert s.submit(H.square, (3,))() == 9


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_server_pickle_protocols(fresh_server, proto):
    s = fresh_server(ncpus=1, proto=proto)
    assert s.submit(H.identity, ({"a": [1, 2.5, None]},))() == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("ncpus", ["four", 1.5, None, [2]])
def test_ncpus_wrong_type(ncpus):
    with pytest.raises(TypeError):
        pp.Server(ncpus=ncpus)


def test_ncpus_negative():
    with pytest.raises(ValueError):
        pp.Server(ncpus=-1)


@pytest.mark.parametrize("ppservers", [["host"], "host", ("host", 1), (None,)])
def test_ppservers_wrong_type(ppservers):
    with pytest.raises(TypeError):
        pp.Server(ncpus=0, ppservers=ppservers)


@pytest.mark.parametrize("entry", ["host:99999", "host:0", "host:abc", "host:", ":60000"])
def test_ppservers_bad_entry(entry):
    with pytest.raises(ValueError):
        pp.Server(ncpus=0, ppservers=(entry,))


@pytest.mark.parametrize("secret", [123, 1.5, ["x"]])
def test_secret_wrong_type(secret):
    with pytest.raises(TypeError):
        pp.Server(ncpus=0, secret=secret)


@pytest.mark.parametrize("kwargs, exc", [
    ({"proto": 6}, ValueError),
    ({"proto": -1}, ValueError),
    ({"socket_timeout": -5}, ValueError),
    ({"socket_timeout": "long"}, TypeError),
])
def test_other_argument_validation(kwargs, exc):
    with pytest.raises(exc):
        pp.Server(ncpus=0, **kwargs)


def test_context_manager_destroys():
    with pp.Server(ncpus=1) as s:
        assert s.submit(H.square, (4,))() == 16
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (4,))
    assert s.get_active_nodes() == {}


def test_context_manager_does_not_swallow_exceptions():
    with pytest.raises(KeyError):
        with pp.Server(ncpus=1) as s:
            raise KeyError("inside")
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (1,))


# --------------------------------------------------------------- submit

def test_submit_returns_job_with_result(server):
    job = server.submit(H.add, (40, 2))
    assert job() == 42
    assert job() == 42  # the result can be taken again
    assert job.finished


def test_submit_keyword_arguments(server):
    job = server.submit(func=H.add, args=(1, 2), depfuncs=(), modules=(), callback=None,
                        callbackargs=(), group="kw", globals=None)
    assert job() == 3


def test_submit_default_args(server):
    assert server.submit(H.getpid)() in server._worker_pids()


def test_many_jobs_results_in_order(server):
    jobs = [server.submit(H.square, (i,)) for i in range(500)]
    assert [j() for j in jobs] == [i * i for i in range(500)]


def test_job_finished_and_wait(fresh_server, tmp_path):
    s = fresh_server(ncpus=1)
    gate = tmp_path / "gate"
    job = s.submit(H.wait_for_file, (str(gate), 30.0))
    assert not job.finished
    assert "pending" in repr(job)
    gate.touch()
    assert job.wait() is None
    assert job.finished
    assert "finished" in repr(job)
    pid, opened = job()
    assert opened


def test_job_tid_and_group(server):
    j1 = server.submit(H.square, (1,), group="g-one")
    j2 = server.submit(H.square, (2,))
    assert j1.group == "g-one"
    assert j2.group == "default"
    assert j1.tid != j2.tid
    server.wait()


def test_job_called_with_arguments_is_an_error(server):
    job = server.submit(H.square, (3,))
    with pytest.raises(TypeError):
        job(1)
    assert job() == 9


@pytest.mark.parametrize("kwargs, word", [
    ({"args": [1]}, "args"),
    ({"args": 1}, "args"),
    ({"depfuncs": [H.add]}, "depfuncs"),
    ({"modules": ["math"]}, "modules"),
    ({"modules": "math"}, "modules"),
    ({"callbackargs": [1]}, "callbackargs"),
])
def test_submit_non_tuple_arguments(server, kwargs, word):
    with pytest.raises(TypeError, match=word):
        server.submit(H.square, **dict({"args": (1,)}, **kwargs))
    assert_nothing_pending(server)


def test_submit_args_message_as_pp(server):
    with pytest.raises(TypeError, match="args argument must be a tuple"):
        server.submit(H.square, [1])


def test_submit_modules_must_be_strings(server):
    with pytest.raises(TypeError, match="modules"):
        server.submit(H.square, (1,), modules=(math,))
    with pytest.raises(TypeError, match="modules"):
        server.submit(H.square, (1,), modules=("math", 3))
    assert_nothing_pending(server)


@pytest.mark.parametrize("g", [[], (), "globals", 1])
def test_submit_globals_must_be_dict(server, g):
    with pytest.raises(TypeError, match="globals"):
        server.submit(H.square, (1,), globals=g)
    assert_nothing_pending(server)


def test_submit_not_callable(server):
    with pytest.raises(TypeError):
        server.submit(42, ())
    with pytest.raises(TypeError):
        server.submit(H.square, (1,), callback=5)
    assert_nothing_pending(server)


# --------------------------------------------------------------- wait(group)

def test_wait_all(server):
    jobs = [server.submit(H.tagged_sleep, (i, 0.01)) for i in range(10)]
    assert server.wait() is None
    assert all(j.finished for j in jobs)
    assert [j() for j in jobs] == list(range(10))


def test_wait_unknown_group_returns(server):
    assert server.wait("never-used-group") is None


@pytest.mark.timeout(60)
def test_wait_group_only_waits_for_that_group(fresh_server, tmp_path, wait_until):
    s = fresh_server(ncpus=2)
    gate, started = tmp_path / "gate", tmp_path / "started"
    slow = s.submit(H.wait_for_file, (str(gate), 30.0, str(started)), group="slow")
    assert wait_until(started.exists, 20)
    fast = [s.submit(H.square, (i,), group="fast") for i in range(5)]
    s.wait("fast")
    assert all(j.finished for j in fast)
    assert [j() for j in fast] == [0, 1, 4, 9, 16]
    assert not slow.finished
    gate.touch()
    s.wait("slow")
    assert slow.finished
    assert slow()[1] is True


# --------------------------------------------------------------- ncpus

def test_get_ncpus(server):
    assert server.get_ncpus() == 2


def test_set_ncpus_values(fresh_server, wait_until):
    s = fresh_server(ncpus=1)
    s.set_ncpus(3)
    assert s.get_ncpus() == 3
    assert wait_until(lambda: len(s._worker_pids()) == 3)
    s.set_ncpus("autodetect")
    assert s.get_ncpus() == autodetected()
    s.set_ncpus(1)
    s.set_ncpus()
    assert s.get_ncpus() == autodetected()
    assert wait_until(lambda: len(s._worker_pids()) == autodetected())
    assert s.submit(H.square, (5,))() == 25


def test_set_ncpus_validation(server):
    with pytest.raises(ValueError):
        server.set_ncpus(-2)
    with pytest.raises(TypeError):
        server.set_ncpus("many")
    with pytest.raises(TypeError):
        server.set_ncpus(2.0)
    assert server.get_ncpus() == 2


# --------------------------------------------------------------- nodes and stats

def test_get_active_nodes(server):
    assert server.get_active_nodes() == {"local": 2}


def test_get_active_nodes_follows_set_ncpus(fresh_server):
    s = fresh_server(ncpus=1)
    assert s.get_active_nodes() == {"local": 1}
    s.set_ncpus(2)
    assert s.get_active_nodes() == {"local": 2}


def test_get_stats(fresh_server):
    s = fresh_server(ncpus=2)
    stats = s.get_stats()
    assert set(stats) == {"local"}
    assert stats["local"].ncpus == 2
    assert stats["local"].njobs == 0
    assert stats["local"].time == 0
    jobs = [s.submit(time.sleep, (0.1,)) for _ in range(4)]
    jobs += [s.submit(H.square, (i,)) for i in range(6)]
    s.wait()
    st = s.get_stats()["local"]
    assert st.njobs == 10
    assert st.ncpus == 2
    # four sleeps of 0.1 s ran in workers: at least 0.4 s of job time
    assert 0.39 <= st.time < 60
    assert "ncpus=2" in repr(st)


def test_print_stats_format(fresh_server, capsys):
    s = fresh_server(ncpus=2)
    for i in range(3):
        s.submit(H.square, (i,))
    s.wait()
    capsys.readouterr()
    s.print_stats()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Job execution statistics:"
    assert " job count | % of all jobs | job time sum | time per job | job server" in lines
    rows = [line for line in lines if line.endswith("| local")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")]
    assert cells[0] == "3"
    assert float(cells[1]) == 100.0
    assert float(cells[2]) >= 0.0
    assert float(cells[3]) >= 0.0
    assert cells[4] == "local"
    elapsed = [line for line in lines if line.startswith("Time elapsed since server creation")]
    assert len(elapsed) == 1
    assert 0 <= float(elapsed[0].split()[-1]) < 600
    assert "0 active tasks, 2 cores" in lines


def test_print_stats_without_jobs(fresh_server, capsys):
    s = fresh_server(ncpus=1)
    s.print_stats()
    out = capsys.readouterr().out
    assert " job count | % of all jobs | job time sum | time per job | job server" in out
    assert "| local" not in out
    assert "0 active tasks, 1 cores" in out


# --------------------------------------------------------------- destroy

def test_destroy_twice_is_harmless(fresh_server):
    s = fresh_server(ncpus=1)
    assert s.submit(H.square, (2,))() == 4
    s.destroy()
    s.destroy()
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (2,))
    assert s.get_active_nodes() == {}


def test_after_destroy(fresh_server):
    s = fresh_server(ncpus=1)
    done = s.submit(H.square, (6,))
    assert done() == 36
    s.destroy()
    with pytest.raises(pp.DestroyedServerError):
        s.submit(H.square, (2,))
    with pytest.raises(pp.DestroyedServerError):
        s.set_ncpus(2)
    # a job finished before destroy keeps its result
    assert done() == 36
    assert s.wait() is None
    assert s.get_active_nodes() == {}


def test_destroyed_server_error_is_runtime_error():
    assert issubclass(pp.DestroyedServerError, RuntimeError)


def test_destroy_stops_workers(fresh_server, wait_until):
    s = fresh_server(ncpus=2)
    assert wait_until(lambda: len(s._worker_pids()) == 2)
    pids = s._worker_pids()
    s.destroy()

    def all_gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    assert wait_until(all_gone, 10)


# --------------------------------------------------------------- Template

def test_template(server):
    t = pp.Template(server, H.add)
    jobs = [t.submit(i, 10) for i in range(5)]
    assert [j() for j in jobs] == [10, 11, 12, 13, 14]


def test_template_with_settings(server):
    got = []
    t = pp.Template(server, H.square, callback=got.append, group="tmpl")
    for i in range(4):
        t.submit(i)
    server.wait("tmpl")
    assert sorted(got) == [0, 1, 4, 9]


def test_template_with_modules(server):
    # cmath is not imported here: the worker imports it from `modules`
    t = pp.Template(server, lambda x: cmath.sqrt(x).real, modules=("cmath",))
    assert t.submit(16)() == 4.0
