"""Helpers for the cluster suites: real ppserver processes on loopback, and
the wire protocol spoken by hand (for fake nodes and hostile clients).

Nothing here mocks the engine: a ``PPServer`` is ``python -m pp.ppserver``
in a child process; ``Wire`` speaks the frames of ARCHITECTURE.md
("Frames and protocol") over a plain socket.
"""
import hashlib
import hmac
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import conftest
import tlswire
from conftest import alive  # noqa: F401 (the cluster suites import it from here)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

HDR = struct.Struct("<QQBBHI")  # u64 len, u64 id, u8 type, u8 flags, u16 aux, u32 extra
F_INIT, F_FUNC, F_JOB, F_RESULT = 1, 2, 3, 4
F_HELLO, F_CHALLENGE, F_AUTH, F_WELCOME, F_PING, F_PONG, F_ERROR, F_BYE = range(16, 24)
MAGIC = b"PPC\x02"
def _proto_version():
    """The wire protocol version, read from the C header that defines it."""
    import re
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, os.pardir, "src", "core", "auth.h")) as f:
        return int(re.search(r"#define PPC_PROTO_VERSION (\d+)", f.read()).group(1))


PROTO_VERSION = _proto_version()


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_ppserver(args, env=None, timeout=20):
    """python -m pp.ppserver ARGS to its end (PP_SECRET unset unless env
    gives it): the CompletedProcess, output captured as text."""
    e = conftest.child_env()
    e.pop("PP_SECRET", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "pp.ppserver"] + list(args), env=e,
                          capture_output=True, text=True, timeout=timeout)


def frame(ftype, payload=b"", fid=0, flags=0, aux=0, extra=0, length=None):
    return HDR.pack(len(payload) if length is None else length, fid, ftype, flags, aux,
                    extra) + payload


def mac(secret, label, *parts):
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, label.encode() + b"".join(parts), hashlib.sha256).digest()


def hello_payload(version=PROTO_VERSION, py=sys.version_info[:2]):
    return MAGIC + struct.pack("<HBB", version, py[0], py[1])


def welcome_payload(ncpus, liveness_ms, version=PROTO_VERSION, py=sys.version_info[:2]):
    return hello_payload(version, py) + struct.pack("<II", ncpus, liveness_ms)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def children(pid):
    """Pids whose parent is pid (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


class Wire:
    """A client-side socket speaking frames by hand: raw bytes until
    handshake() (or tls()), then frames inside the TLS session."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.tls = None

    def send(self, data):
        if self.tls:
            self.tls.send(data)
        else:
            self.sock.sendall(data)

    def _recv(self):
        return self.tls.recv(65536) if self.tls else self.sock.recv(65536)

    def recv_frame(self):
        while len(self.buf) < HDR.size:
            chunk = self._recv()
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        n, fid, ftype, flags, aux, extra = HDR.unpack_from(self.buf)
        while len(self.buf) < HDR.size + n:
            chunk = self._recv()
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        payload = self.buf[HDR.size:HDR.size + n]
        self.buf = self.buf[HDR.size + n:]
        return ftype, fid, flags, payload

    def start_tls(self, secret):
        """Read the node's preamble and run the TLS handshake with the
        PSK derived from secret (tlswire.TLSError when it is refused)."""
        salt = tlswire.read_preamble(self.sock)
        self.tls = tlswire.TLS(self.sock, tlswire.derive(secret, salt))

    def handshake(self, secret, version=PROTO_VERSION):
        """Authenticate as a client; returns (ncpus, liveness_ms)."""
        self.start_tls(secret)
        self.send(frame(F_HELLO, hello_payload(version)))
        ftype, _, _, p = self.recv_frame()
        assert ftype == F_WELCOME, (ftype, p)
        return struct.unpack("<II", p[8:16])

    def closed_by_peer(self, timeout=5.0):
        """True when the peer closes the connection within timeout (data
        it sends first, such as an ERROR frame, is skipped)."""
        if self.tls:
            self.tls.timeout(timeout)
        else:
            self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self._recv():
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False

    def close(self):
        if self.tls:
            self.tls.close()
            self.tls = None
        self.sock.close()


class PPServer:
    """A ppserver child process on 127.0.0.1 (or what -i says), its output in
    a log file. Use as a context manager or call stop()."""

    def __init__(self, tmp_path, secret="cluster-secret-for-tests", workers=1, args=(), port=None,
                 env=None, wait=True, netns=None, interface="127.0.0.1"):
        self.secret = secret
        self.port = port or free_port()
        self.log_path = tmp_path / ("ppserver-%d.log" % self.port)
        cmd = [sys.executable, "-m", "pp.ppserver", "-p", str(self.port)]
        if interface:
            cmd += ["-i", interface]
        if workers is not None:
            cmd += ["-w", str(workers)]
        if secret is not None:
            cmd += ["-s", secret]
        cmd += list(args)
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        full_env = conftest.child_env()
        # job functions of the suites live in tests/cluster_jobs.py: the
        # node's workers import them by reference, as a real node would
        full_env["PYTHONPATH"] = TESTS_DIR + os.pathsep + full_env["PYTHONPATH"]
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=str(tmp_path), start_new_session=True)
        self.pid = self.proc.pid
        self.addr = "127.0.0.1:%d" % self.port
        if wait:
            self.wait_ready()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("ppserver exited with %s:\n%s" % (self.proc.returncode,
                                                                     self.log()))
            time.sleep(0.02)
        raise RuntimeError("ppserver did not start:\n" + self.log())

    def workers(self):
        return children(self.pid)

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        # workers are in their own process groups; a SIGKILLed ppserver's
        # workers die with it (PR_SET_PDEATHSIG); reap leftovers anyway
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


import pytest  # noqa: E402


@pytest.fixture
def start_ppserver(tmp_path):
    """start_ppserver(**PPServer kwargs) -> PPServer; all stopped at teardown."""
    yield from conftest.tracked(lambda **kw: PPServer(tmp_path, **kw), PPServer.stop)

