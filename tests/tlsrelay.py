"""A TCP relay for the TLS attack suite: it sits on 127.0.0.2 between a
client and a ppserver on 127.0.0.1, records every byte both ways, and on
the first connection it relays may tamper with the stream: inject frames,
flip a bit, or cut the handshake short. Threads, blocking sockets."""
import socket
import threading


class Relay:
    """mode: None (record only), "inject" (after the handshake, put bytes
    into the client -> node stream), "flip" (flip a bit of the node -> client
    stream once results flow), "downgrade" (every preamble offers no TLS),
    "break" (answer the first connection's
    handshake with a forged ERROR frame, then close it)."""

    def __init__(self, target_port, mode=None, payload=b"", host="127.0.0.2", after=2000):
        self.target = ("127.0.0.1", target_port)
        self.mode, self.payload, self.after = mode, payload, after
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.addr = "%s:%d" % (host, self.port)
        self.c2s, self.s2c = bytearray(), bytearray()
        self.tampered = threading.Event()
        self.nconn = 0
        self.lock = threading.Lock()
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            s.settimeout(None)
            with self.lock:
                index = self.nconn
                self.nconn += 1
            st = {"c2s": 0, "s2c": 0}
            for src, dst, way in ((c, s, "c2s"), (s, c, "s2c")):
                threading.Thread(target=self._pump, args=(src, dst, way, index, st),
                                 daemon=True).start()

    def _tamper(self, way, data, index, st):
        before = st[way]
        if self.mode == "downgrade" and way == "s2c" and before == 0:
            # every preamble says "no TLS" (the benchmarks' cleartext mode)
            self.tampered.set()
            return data[:5] + b"\x03" + data[6:]
        if index != 0 or self.tampered.is_set():
            return data
        if self.mode == "break" and way == "s2c":
            # the preamble passes; the rest of the handshake is a forged ERROR
            self.tampered.set()
            return data[:24] + self.payload
        if self.mode == "inject" and way == "c2s" and before + len(data) > self.after:
            self.tampered.set()
            return self.payload + data
        if self.mode == "flip" and way == "s2c" and before + len(data) > self.after:
            self.tampered.set()
            k = max(0, self.after - before) + (len(data) - max(0, self.after - before)) // 2
            b = bytearray(data)
            b[k] ^= 0x10
            return bytes(b)
        return data

    def _pump(self, src, dst, way, index, st):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    (self.c2s if way == "c2s" else self.s2c).extend(data)
                out = self._tamper(way, data, index, st)
                st[way] += len(data)
                dst.sendall(out)
                if self.mode == "break" and index == 0 and self.tampered.is_set():
                    break
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.lsock.close()
