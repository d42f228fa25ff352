"""Helpers for the status page suites: plain HTTP requests to a status
endpoint (urllib, or raw bytes over a socket for malformed ones)."""
import json
import socket
import urllib.error
import urllib.request


def get(url, path="", token=None, timeout=5.0):
    """(status code, body bytes, headers) of GET url+path; HTTP errors too."""
    req = urllib.request.Request(url.rstrip("/") + "/" + path.lstrip("/"))
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def status(url, token=None):
    code, body, _ = get(url, "status", token)
    assert code == 200, (code, body[:200])
    return json.loads(body)


def raw(port, data, host="127.0.0.1", timeout=5.0):
    """Send bytes, return what comes back until the server closes or the
    timeout passes (b"" when it closed without answering)."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def code_of(reply):
    """The status code of a raw HTTP reply, or None when there was none."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


def port_of(url):
    return int(url.rstrip("/").rsplit(":", 1)[1])
