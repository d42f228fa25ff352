#!/usr/bin/env python3
# make_corpus.py - writes the fuzz seed inputs into fuzz/corpus/ (see the docstring).
"""make_corpus.py - writes the seed inputs of the fuzz targets (python3,
standard library only) into fuzz/corpus/frames/ and fuzz/corpus/handshake/.

frames/: byte streams as a peer would send them (wire format of
src/core/frame.h): one valid frame of every type, a full handshake with
correct proofs, a valid discovery announcement (raw, and inside a frame),
and malformed streams: a header claiming 2^63 bytes, lengths at and just
over the 1 MiB limit, unknown types, truncated headers and payloads,
handshake payloads of the wrong length or magic.

handshake/: structured inputs of fuzz_handshake.c (see the layout in
handshake_seed below).

The secret and clock match fuzz/fuzz_common.h. Output is deterministic;
run it again after changing the formats:  python3 fuzz/make_corpus.py
"""
import hashlib
import hmac
import os
import struct
import sys

SECRET = b"fuzz-secret"  # FUZZ_SECRET
NOW = 1700000000  # FUZZ_NOW
LIMIT = 1 << 20  # FUZZ_FRAME_LIMIT

INIT, FUNC, JOB, RESULT = 1, 2, 3, 4
HELLO, CHALLENGE, AUTH, WELCOME, PING, PONG, ERROR, BYE = range(16, 24)
MAGIC = b"PPC\x01"
VERSION = 1


def frame(ftype, payload=b"", fid=0, flags=0, aux=0, extra=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<QQBBHI", n, fid, ftype, flags, aux, extra) + payload


def mac(label, *parts):
    return hmac.new(SECRET, label + b"".join(parts), hashlib.sha256).digest()


def hello(nonce, version=VERSION, major=3, minor=11):
    return MAGIC + struct.pack("<HBB", version, major, minor) + nonce


def challenge(cnonce, snonce, ncpus=8):
    proof = mac(b"ppc-server", cnonce, snonce)
    return hello(snonce) + proof + struct.pack("<I", ncpus)


def announce(port=60000, t=NOW, nonce=bytes(range(16))):
    body = b"PPCA" + struct.pack("<HHQ", VERSION, port, t) + nonce
    return body + mac(b"ppc-announce", body)


def frames_seeds():
    cn = bytes(range(32))
    sn = bytes(range(100, 132))
    h = hello(cn)
    c = challenge(cn, sn)
    a = mac(b"ppc-client", cn, sn)
    w = struct.pack("<I", 8)
    s = {}
    s["hello"] = frame(HELLO, h)
    s["challenge"] = frame(CHALLENGE, c)
    s["auth"] = frame(AUTH, a)
    s["welcome"] = frame(WELCOME, w)
    s["client_side"] = frame(HELLO, h) + frame(AUTH, a) + frame(PING, fid=1)
    s["server_side"] = frame(CHALLENGE, c) + frame(WELCOME, w) + frame(PONG, fid=1)
    s["full_exchange"] = (frame(HELLO, h) + frame(CHALLENGE, c) + frame(AUTH, a) +
                          frame(WELCOME, w) + frame(PING, fid=7) + frame(PONG, fid=7) +
                          frame(BYE))
    s["init"] = frame(INIT, b"startup-blob")
    s["func"] = frame(FUNC, b"\x80\x04function-blob", fid=3)
    s["job"] = frame(JOB, struct.pack("<Q", 3) + b"args", fid=42)
    s["result"] = frame(RESULT, struct.pack("<Q", 12345) + b"result", fid=42)
    s["error"] = frame(ERROR, b"authentication failed")
    s["ping_pong_bye"] = frame(PING, fid=1) + frame(PONG, fid=1) + frame(BYE)
    s["worker_stream"] = (frame(INIT, b"x") + frame(FUNC, b"f", fid=1) +
                          b"".join(frame(JOB, struct.pack("<Q", 1) + bytes([i]), fid=i)
                                   for i in range(8)))
    # long streams: buffer growth and compaction in the chunked reader
    s["many_frames"] = b"".join(
        frame(JOB, struct.pack("<Q", 1) + bytes([i]) * (i % 40), fid=i) for i in range(200)
    ) + frame(RESULT, b"partial", length=100)
    s["big_payload"] = frame(RESULT, struct.pack("<Q", 1) + bytes(range(256)) * 23, fid=9)
    s["flags_aux_extra"] = frame(JOB, b"\0" * 8, fid=2**64 - 1, flags=0xff, aux=0xffff,
                                 extra=0xffffffff)
    # announcements
    s["announce_raw"] = announce()
    s["announce_in_frame"] = frame(PING, announce())
    s["announce_stale"] = announce(t=NOW - 61)
    # hostile lengths
    s["len_2p63"] = frame(HELLO, b"", length=2**63)
    s["len_max"] = frame(RESULT, b"", length=2**64 - 1)
    s["len_limit"] = frame(RESULT, b"abc", length=LIMIT)
    s["len_limit_plus1"] = frame(RESULT, b"abc", length=LIMIT + 1)
    s["len_huge_after_valid"] = frame(HELLO, h) + frame(JOB, b"", length=2**62)
    # unknown types
    s["type_0"] = frame(0, b"x")
    s["type_5"] = frame(5, b"x")
    s["type_15"] = frame(15, b"x")
    s["type_24"] = frame(24, b"x")
    s["type_255_after_valid"] = frame(PING) + frame(255)
    # truncations
    s["empty"] = b""
    s["header_partial"] = frame(HELLO, h)[:10]
    s["header_only"] = frame(HELLO, h)[:24]
    s["payload_partial"] = frame(HELLO, h)[:-1]
    s["challenge_partial"] = frame(CHALLENGE, c)[:50]
    # wrong handshake payloads
    s["hello_short"] = frame(HELLO, h[:-1])
    s["hello_long"] = frame(HELLO, h + b"\0")
    s["hello_bad_magic"] = frame(HELLO, b"PPC\x02" + h[4:])
    s["challenge_short"] = frame(CHALLENGE, c[:-1])
    s["challenge_bad_magic"] = frame(CHALLENGE, b"XPC\x01" + c[4:])
    s["challenge_bad_proof"] = frame(CHALLENGE, c[:40] + bytes(32) + c[72:])
    s["auth_short"] = frame(AUTH, a[:31])
    s["auth_wrong"] = frame(HELLO, h) + frame(CHALLENGE, c) + frame(AUTH, bytes(32))
    s["welcome_long"] = frame(WELCOME, w + b"\0")
    # the raw input as an OOB blob (src/core/shm.h) and as a mapping whose
    # first half is a blob followed by a hole table (src/core/vm.h)
    s["oob_blob"] = oob_blob(b"\x80\x05stream.", [b"\x01" * 10, b"\x02" * 20])
    s["oob_blob_huge_count"] = oob_blob(b"s.", [])[:-8] + struct.pack("<II", 0xFFFFFFFF,
                                                                        0x42435050)
    s["hole_table"] = hole_mapping(128, [(8, 16, 0x1000), (30, 10, 0x2000)])
    s["hole_table_overlap"] = hole_mapping(128, [(8, 16, 0x1000), (20, 10, 0x2000)])
    return s


def oob_blob(stream, bufs):
    """stream, pad, buffers (64-byte aligned), table, trailer."""
    out, table = bytearray(stream), b""
    for b in bufs:
        out += bytes(-len(out) % 64)
        table += struct.pack("<QQ", len(out), len(b))
        out += b
    return bytes(out) + table + struct.pack("<QII", len(stream), len(bufs), 0x42435050)


def hole_mapping(blob_len, holes, pid=1234):
    """A blob of blob_len bytes, its hole table, padded so the blob is the
    first half of the input (as fuzz_frames.c reads it)."""
    at = (blob_len + 7) & ~7
    t = struct.pack("<IIII", 0x56435050, len(holes), pid, 0)
    for off, n, addr in holes:
        t += struct.pack("<QQQQII", off, n, addr, 0, 0, 0)
    body = bytes(range(blob_len)) + bytes(at - blob_len) + t
    return body + bytes(max(0, 2 * blob_len - len(body)))


def handshake_seed(secret=b"", hello_f=(1, 3, 11, bytes(32)), chal_f=(1, 3, 11, bytes(32), 8),
                   flip_at=0, flip_mask=1, alt=b"", mode=0, port=0, now=0, max_age=0,
                   traw=0, delta=0, wrong_len=0, ann_nonce=bytes(16)):
    """Field layout read by fuzz_handshake.c, in order:
    u8 secret_len (mod 65), secret; hello: u16 version, u8 major, u8 minor,
    u8[32] nonce; challenge: u16 version, u8 major, u8 minor, u8[32] nonce,
    u32 ncpus; u16 flip_at, u8 flip_mask; u8 alt_len (mod 65), alt secret;
    announcement: u8 mode, u16 port, u64 now, u64 max_age, u64 t,
    u16 delta, u8 wrong_len, u8[16] nonce."""
    out = bytes([len(secret)]) + secret
    out += struct.pack("<HBB", *hello_f[:3]) + hello_f[3]
    out += struct.pack("<HBB", *chal_f[:3]) + chal_f[3] + struct.pack("<I", chal_f[4])
    out += struct.pack("<HB", flip_at, flip_mask)
    out += bytes([len(alt)]) + alt
    out += struct.pack("<BHQQQHB", mode, port, now, max_age, traw, delta, wrong_len)
    out += ann_nonce
    return out


def handshake_seeds():
    s = {}
    s["zeros"] = b""
    s["typical"] = handshake_seed(SECRET, (1, 3, 12, bytes(range(32))),
                                  (1, 3, 12, bytes(range(50, 82)), 16), flip_at=45,
                                  flip_mask=0x10, alt=b"other-secret", mode=1, port=60000,
                                  now=NOW, max_age=60, delta=30, wrong_len=63)
    s["same_key_padded"] = handshake_seed(b"abc", alt=b"abc\0\0", mode=2, now=NOW,
                                          max_age=60, delta=61)
    s["long_secret"] = handshake_seed(bytes(range(1, 65)), alt=bytes(range(1, 64)),
                                      flip_at=3, flip_mask=0xff, mode=3 | 8 | 16, now=NOW,
                                      max_age=60)
    s["edge_low"] = handshake_seed(SECRET, mode=3 | 16, now=NOW, max_age=60, flip_at=70)
    s["edge_high_exact"] = handshake_seed(SECRET, mode=3 | 8, now=NOW, max_age=60)
    s["wrap_high"] = handshake_seed(SECRET, mode=1, now=2**64 - 10, max_age=2**63, delta=100)
    s["wrap_low"] = handshake_seed(SECRET, mode=2, now=5, max_age=1000, delta=100)
    s["max_age_max"] = handshake_seed(SECRET, mode=0, now=0, max_age=2**64 - 1,
                                      traw=2**64 - 1)
    s["small_window"] = handshake_seed(SECRET, mode=1 | 4 | 8, now=NOW, delta=3, port=1)
    s["all_ff"] = b"\xff" * 300
    return s


def tls_seeds():
    """Inputs of fuzz_tls.c: byte 0 even = a stranger's bytes before any
    handshake; odd = after a real handshake, byte 1 splits the rest into
    data sent through TLS and raw bytes injected around it."""
    s = {}
    s["stranger_clienthello_prefix"] = b"\x00\x00" + b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" \
        + bytes(32)
    s["stranger_garbage"] = b"\x02\x00" + bytes(range(256))
    s["stranger_old_hello"] = b"\x00\x00" + frame(16, b"PPC\x01" + bytes(36))
    s["tls_frames_only"] = b"\x01\xff" + frame(16, b"PPC\x02\x03\x00\x03\x0b") + frame(20) + \
        frame(3, bytes(8) + b"args", fid=7)
    s["tls_frames_then_injected_job"] = b"\x01\x80" + frame(20) * 4 + frame(2, b"evil", fid=1) + \
        frame(3, bytes(8) + b"x", fid=9)
    s["tls_injected_record"] = b"\x01\x00" + b"\x17\x03\x03\x00\x20" + bytes(32)
    s["tls_half_frame"] = b"\x01\xc0" + frame(4, bytes(100), fid=5)[:60] + b"\x17\x03\x03\x40\x00"
    return s


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    for sub, seeds in (("frames", frames_seeds()), ("handshake", handshake_seeds()),
                       ("tls", tls_seeds())):
        d = os.path.join(root, sub)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)
        print(f"{d}: {len(seeds)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
