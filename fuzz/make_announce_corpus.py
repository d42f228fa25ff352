#!/usr/bin/env python3
"""make_announce_corpus.py - writes the seed inputs of fuzz_announce.c
(python3, standard library only) into fuzz/corpus/announce/: a valid
announcement and a valid answer under the fuzz key (scrypt of FUZZ_SECRET,
as announce.c derives it), a query, discovery entries, field layouts at
the u64 edges, and near misses (wrong length, version, magic, padding).
Deterministic; run it again after changing the format:
python3 fuzz/make_announce_corpus.py
"""
import hashlib
import hmac
import os
import struct

SECRET = b"fuzz-secret"  # FUZZ_SECRET
NOW = 1700000000  # FUZZ_NOW
VERSION = 3  # PPC_ANNOUNCE_VERSION
LEN = 84  # PPC_ANNOUNCE_LEN == PPC_QUERY_LEN
KEY = hashlib.scrypt(SECRET, salt=b"ppc-announce-key-v3", n=32768, r=8, p=1,
                     maxmem=80 << 20, dklen=32)


def announcement(addr=b"\x7f\x00\x00\x01", port=60000, t=NOW, nonce=bytes(range(16)),
                 echo=bytes(16), version=VERSION):
    body = b"PPCA" + struct.pack("<HH", version, port) + addr + struct.pack("<Q", t)
    body += nonce + echo
    return body + hmac.new(KEY, b"ppc-announce" + body, hashlib.sha256).digest()


def query(nonce=bytes(range(16, 32))):
    q = b"PPCQ" + struct.pack("<HH", VERSION, 0) + nonce
    return q + bytes(LEN - len(q))


def fields(addr, port, t, now, max_age, nonce=bytes(16), echo=bytes(16)):
    return addr + struct.pack("<HQQQ", port, t, now, max_age) + nonce + echo


def seeds():
    s = {}
    s["announce"] = announcement()
    s["answer"] = announcement(echo=bytes(range(16, 32)))
    s["announce_short"] = announcement()[:-1]
    s["announce_v2"] = announcement(version=2)
    s["query"] = query()
    s["query_old8"] = b"PPCQ\x01\x00\x00\x00"
    s["query_junk_pad"] = query()[:-1] + b"\x01"
    for i, e in enumerate(("*", "*:60000", "192.168.1.*", "10.*:1", "172.16.*",
                           "1.2.3.4.*", "*:65536", "**", "host:60000")):
        s["entry_%d" % i] = e.encode()
    s["fields_fresh"] = fields(b"\x0a\x00\x00\x01", 1, NOW, NOW + 60, 60)
    s["fields_edge"] = fields(b"\xff" * 4, 65535, 2**64 - 1, 0, 2**64 - 1)
    s["fields_wrap"] = fields(b"\x00" * 4, 0, 0, 2**64 - 1, 10, echo=b"\x01" * 16)
    return s


def main():
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "announce")
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(d, name + ".bin"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
