"""The status endpoint under bad clients: oversized URL and headers, a
malformed request line, a body on a GET, a client dripping its headers
(slowloris), and a flood of idle connections. Each gets an error or is cut
off, the endpoint serves again afterwards, and jobs keep completing
meanwhile (the engine thread serves both). Loopback only."""
import socket
import threading
import time

import pytest

from statusutil import code_of, get, port_of, raw

pytestmark = pytest.mark.timeout(60)


def tiny(x):
    return x + 1


class JobStream:
    """Submits small jobs back to back in a thread and counts results."""

    def __init__(self, server):
        self.server = server
        self.done = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            jobs = [self.server.submit(tiny, (i,)) for i in range(50)]
            for i, j in enumerate(jobs):
                assert j() == i + 1
            self.done += len(jobs)
            time.sleep(0.002)  # steady, without taking every core of the machine

    def count_during(self, seconds):
        a = self.done
        time.sleep(seconds)
        return self.done - a

    def close(self):
        self.stop = True
        self.t.join(30)


@pytest.fixture
def target(fresh_server):
    s = fresh_server(2, status_port=0)
    stream = JobStream(s)
    yield s, port_of(s.status_url), stream
    stream.close()


def test_oversized_and_malformed_requests_get_errors(target):
    s, port, stream = target
    before = stream.done
    big_url = b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    r = raw(port, big_url)
    assert r == b"" or code_of(r) in (400, 414, 431), r[:100]
    hdrs = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 200) for i in range(200))
    r = raw(port, b"GET /status HTTP/1.1\r\nHost: x\r\n" + hdrs + b"Connection: close\r\n\r\n")
    assert r == b"" or code_of(r) in (400, 413, 431), r[:100]
    assert b"jobs_done" not in r
    for bad in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x00\x01\x02\xff\r\n\r\n",
                b"GET /status HTTP/9.9\r\nHost: x\r\n\r\n",
                b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        r = raw(port, bad)
        assert r == b"" or code_of(r) in (400, 405, 413, 505), (bad, r[:100])
        assert b"jobs_done" not in r
    r = raw(port, b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  b"Connection: close\r\n\r\nhello")
    assert code_of(r) == 400, r[:100]
    r = raw(port, b"DELETE /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert code_of(r) == 405
    # still serving, and jobs went on throughout
    assert get(s.status_url, "health")[0] == 200
    assert stream.count_during(0.3) > 0 and stream.done > before


def test_a_client_dripping_its_headers_is_cut_off(target):
    s, port, stream = target
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    closed_after = None
    done_before = stream.done
    for i in range(12):
        time.sleep(0.7)
        try:
            c.sendall(b"X-Drip-%d: y\r\n" % i)  # activity, so no idle timeout
            c.settimeout(0.01)
            if c.recv(1) == b"":
                closed_after = time.monotonic() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            closed_after = time.monotonic() - t0
            break
    c.close()
    assert closed_after is not None, "the dripping client was never cut off"
    assert closed_after < 7.5  # the request deadline is 5 s
    assert stream.done > done_before
    assert get(s.status_url, "health")[0] == 200


def test_a_flood_of_idle_connections_is_bounded_and_clears(target):
    s, port, stream = target
    socks = []
    for _ in range(60):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    try:
        # jobs keep completing while the slots are held
        assert stream.count_during(1.0) > 0
        # connections over the per-address limit are closed at once
        closed = 0
        for c in socks:
            c.settimeout(0.2)
            try:
                if c.recv(1) == b"":
                    closed += 1
            except socket.timeout:
                pass
            except OSError:
                closed += 1
        assert closed >= len(socks) - 8, (closed, len(socks))
        # and those held without a request are cut after the request deadline
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if get(s.status_url, "health", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the endpoint did not serve again while idle connections were held")
        assert stream.count_during(0.3) > 0
    finally:
        for c in socks:
            c.close()
