"""Making and giving the cluster secret (README "Security"): ppserver
--new-secret, --secret-file and secret_file (config file and pp.Server),
the warnings for a short secret, a secret on the command line and a secret
file other users can read; real ppserver processes on loopback."""
import logging
import os

import pytest

import pp
import tls_jobs as T
from clusterutil import PPServer, run_ppserver, start_ppserver  # noqa: F401
from conftest import _wait_until as wait_until


def secret_file(tmp_path, value, mode=0o600, name="secret"):
    p = tmp_path / name
    p.write_text(value + "\n")
    os.chmod(p, mode)
    return str(p)


@pytest.mark.timeout(30)
def test_new_secret_is_strong_and_fresh():
    a, b = run_ppserver(["--new-secret"]), run_ppserver(["--new-secret"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    sa, sb = a.stdout.strip(), b.stdout.strip()
    assert sa != sb and len(sa) >= 43 and len(set(sa)) > 16
    assert all(c.isalnum() or c in "-_" for c in sa)


@pytest.mark.timeout(30)
def test_secret_file_on_both_sides(start_ppserver, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pp")
    value = pp.new_secret()
    path = secret_file(tmp_path, value)
    node = start_ppserver(workers=1, secret=None, args=["--secret-file", path],
                          env={"PP_SECRET": ""})
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret_file=path) as c:
        assert c.submit(T.echo_tagged, ("from a file",))()[0] == "from a file"
    assert not [r for r in caplog.records if r.name == "pp"], caplog.records
    assert "warning" not in node.log().lower()
    assert value not in node.log()
    # the secret is nowhere on the node's command line
    with open("/proc/%d/cmdline" % node.pid, "rb") as f:
        assert value.encode() not in f.read()
    # both given: refused
    with pytest.raises(ValueError):
        pp.Server(ncpus=0, ppservers=(node.addr,), secret="x" * 20, secret_file=path)


@pytest.mark.timeout(30)
def test_secret_file_in_the_config_file(start_ppserver, tmp_path):
    path = secret_file(tmp_path, "config-file-secret-0123456789")
    conf = tmp_path / "ppserver.conf"
    conf.write_text("[general]\nsecret_file = %s\n" % path)
    node = start_ppserver(workers=1, secret=None, args=["-c", str(conf)], env={"PP_SECRET": ""})
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret="config-file-secret-0123456789") as c:
        assert c.submit(T.echo_tagged, ("conf",))()[0] == "conf"


@pytest.mark.timeout(30)
def test_warnings_short_secret_command_line_readable_file(start_ppserver, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pp")
    node = start_ppserver(workers=1, secret="short-secret")  # -s, 12 characters
    log = node.log()
    assert "-s puts the secret on the command line" in log
    assert "secret is short" in log
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret="short-secret") as c:
        assert c.submit(T.echo_tagged, ("short",))()[0] == "short"
    msgs = [r.getMessage() for r in caplog.records if r.name == "pp"]
    assert any("secret is short" in m for m in msgs), msgs
    caplog.clear()
    path = secret_file(tmp_path, "a-long-enough-secret-0123456789", mode=0o644, name="open")
    with pp.Server(ncpus=0, ppservers=(node.addr,), secret_file=path):
        pass
    msgs = [r.getMessage() for r in caplog.records if r.name == "pp"]
    assert any("can be read by other users" in m for m in msgs), msgs


@pytest.mark.timeout(30)
def test_missing_or_empty_secret_file_is_an_error(tmp_path):
    p = run_ppserver(["-i", "127.0.0.1", "-p", "1", "--secret-file", str(tmp_path / "none")])
    assert p.returncode != 0 and "secret file" in p.stderr, p.stderr
    empty = secret_file(tmp_path, "", name="empty")
    with pytest.raises(ValueError):
        pp.Server(ncpus=0, ppservers=("127.0.0.1:1",), secret_file=empty)
