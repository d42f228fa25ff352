"""TLS 1.3 with ppc's external PSK (src/core/tls.h), spoken by hand from the
tests through ctypes on the system's libssl: Python's ssl module has no
external PSK before 3.13. Blocking sockets only; tests use it to play a
hostile client after a real handshake, or a fake node."""
import ctypes
import ctypes.util
import errno
import hashlib
import socket
import struct

PRE_LEN = 24
PSK_ID = b"ppc-psk-1"

_lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3", use_errno=True)
_vp = ctypes.c_void_p


def _fn(name, res, *args):
    f = getattr(_lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


_TLS_client_method = _fn("TLS_client_method", _vp)
_TLS_server_method = _fn("TLS_server_method", _vp)
_CTX_new = _fn("SSL_CTX_new", _vp, _vp)
_CTX_free = _fn("SSL_CTX_free", None, _vp)
_CTX_ctrl = _fn("SSL_CTX_ctrl", ctypes.c_long, _vp, ctypes.c_int, ctypes.c_long, _vp)
_USE_CB = ctypes.CFUNCTYPE(ctypes.c_int, _vp, _vp, ctypes.POINTER(_vp),
                           ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(_vp))
_FIND_CB = ctypes.CFUNCTYPE(ctypes.c_int, _vp, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t,
                            ctypes.POINTER(_vp))
_CTX_set_use = _fn("SSL_CTX_set_psk_use_session_callback", None, _vp, _USE_CB)
_CTX_set_find = _fn("SSL_CTX_set_psk_find_session_callback", None, _vp, _FIND_CB)
_SSL_new = _fn("SSL_new", _vp, _vp)
_SSL_free = _fn("SSL_free", None, _vp)
_SSL_set_fd = _fn("SSL_set_fd", ctypes.c_int, _vp, ctypes.c_int)
_SSL_connect = _fn("SSL_connect", ctypes.c_int, _vp)
_SSL_accept = _fn("SSL_accept", ctypes.c_int, _vp)
_SSL_read = _fn("SSL_read", ctypes.c_int, _vp, ctypes.c_void_p, ctypes.c_int)
_SSL_write = _fn("SSL_write", ctypes.c_int, _vp, ctypes.c_char_p, ctypes.c_int)
_SSL_get_error = _fn("SSL_get_error", ctypes.c_int, _vp, ctypes.c_int)
_SESS_new = _fn("SSL_SESSION_new", _vp)
_SESS_set_key = _fn("SSL_SESSION_set1_master_key", ctypes.c_int, _vp, ctypes.c_char_p,
                    ctypes.c_size_t)
_SESS_set_cipher = _fn("SSL_SESSION_set_cipher", ctypes.c_int, _vp, _vp)
_SESS_set_version = _fn("SSL_SESSION_set_protocol_version", ctypes.c_int, _vp, ctypes.c_int)
_CIPHER_find = _fn("SSL_CIPHER_find", _vp, _vp, ctypes.c_char_p)
_SSL_CTRL_SET_MIN_PROTO_VERSION = 123
_TLS1_3 = 0x304
_SSL_ERROR_ZERO_RETURN = 6
_SSL_ERROR_SYSCALL = 5


class TLSError(Exception):
    pass


def derive(secret, salt):
    """The PSK of tls.h: scrypt(secret, "ppc-psk-1:" || salt), N=2^15, r=8, p=1."""
    if isinstance(secret, str):
        secret = secret.encode()
    return hashlib.scrypt(secret, salt=b"ppc-psk-1:" + salt, n=1 << 15, r=8, p=1,
                          maxmem=64 << 20, dklen=32)


def preamble(salt, mode=1):
    return b"PPCT" + bytes([1, mode, 0, 0]) + salt


def read_preamble(sock):
    data = b""
    while len(data) < PRE_LEN:
        chunk = sock.recv(PRE_LEN - len(data))
        if not chunk:
            raise EOFError("closed before the preamble")
        data += chunk
    assert data[:6] == b"PPCT\x01\x01", data
    return data[8:]


class TLS:
    """One TLS session over a connected socket (made blocking)."""

    def __init__(self, sock, key, server=False):
        self.sock = sock
        sock.setblocking(True)
        self._key = key
        self._id = ctypes.create_string_buffer(PSK_ID, len(PSK_ID))
        self.ctx = _CTX_new(_TLS_server_method() if server else _TLS_client_method())
        _CTX_ctrl(self.ctx, _SSL_CTRL_SET_MIN_PROTO_VERSION, _TLS1_3, None)
        if server:
            self._cb = _FIND_CB(self._find)
            _CTX_set_find(self.ctx, self._cb)
        else:
            self._cb = _USE_CB(self._use)
            _CTX_set_use(self.ctx, self._cb)
        self.ssl = _SSL_new(self.ctx)
        _SSL_set_fd(self.ssl, sock.fileno())
        self.timeout(30)
        rc = (_SSL_accept if server else _SSL_connect)(self.ssl)
        if rc != 1:
            err = _SSL_get_error(self.ssl, rc)
            self.close()
            raise TLSError("TLS handshake failed (SSL error %d)" % err)

    def _session(self, ssl):
        s = _SESS_new()
        c = _CIPHER_find(ssl, b"\x13\x01")
        _SESS_set_key(s, self._key, len(self._key))
        _SESS_set_cipher(s, c)
        _SESS_set_version(s, _TLS1_3)
        return s

    def _use(self, ssl, md, idp, idlen, sess):
        idp[0] = ctypes.cast(self._id, _vp)
        idlen[0] = len(PSK_ID)
        sess[0] = self._session(ssl)
        return 1

    def _find(self, ssl, ident, n, sess):
        sess[0] = self._session(ssl) if ident[:n] == PSK_ID else None
        return 1

    def timeout(self, seconds):
        tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)

    def send(self, data):
        view = bytes(data)
        while view:
            n = _SSL_write(self.ssl, view, len(view))
            if n <= 0:
                raise BrokenPipeError("TLS write failed (SSL error %d)"
                                      % _SSL_get_error(self.ssl, n))
            view = view[n:]

    def recv(self, n):
        """Up to n bytes; b"" when the peer closed or the session failed;
        socket.timeout when nothing came within the timeout."""
        buf = ctypes.create_string_buffer(n)
        ctypes.set_errno(0)
        got = _SSL_read(self.ssl, buf, n)
        if got > 0:
            return buf.raw[:got]
        err = _SSL_get_error(self.ssl, got)
        if err == _SSL_ERROR_SYSCALL and ctypes.get_errno() in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise socket.timeout("timed out")
        return b""

    def close(self):
        if self.ssl:
            _SSL_free(self.ssl)
            self.ssl = None
        if self.ctx:
            _CTX_free(self.ctx)
            self.ctx = None
