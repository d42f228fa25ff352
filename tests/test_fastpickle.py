"""Arguments and results of tiny jobs are written and read as pickle
opcodes by hand (src/py/fastpickle.c) instead of through a Pickler object.

These tests send values across a real worker in both directions and check
they come back equal and of the very same type: scalars at every boundary
of the integer, string and bytes encodings, flat tuples of every length
around the hand-written limit, and values that must fall back to _pickle
(subclasses, nested containers, non-ASCII text, big integers)."""
import enum
import math
import pickle

import pytest

import helpers_mod as H


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, -1, -128, -129, -255, -256, -65536,
        2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**32, 2**40 + 5, -2**40 - 5,
        2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**100, -2**100, 0x7f_ffff, 0x80_0000,
        -0x80_0000, -0x80_0001]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, float("inf"), float("-inf"), math.pi]
STRS = ["", "a", "x" * 255, "y" * 256, "z" * 70000, "héllo", "日本", "\udcff"]
BYTES = [b"", b"\x00", b"a" * 255, b"b" * 256, bytes(range(256)) * 300]
COMPLEX = [3 + 4j, -0.0 - 0j, complex(float("inf"), -1.5), 1e300j]
LISTS = [[], [1, 2, 3], [1.5, "a", None, b"b", True, 2**70], [1 + 1j] * 3000,
         ["s%d" % i for i in range(300)], [[1], 2], [bytearray(b"x")], list(range(70000))]
OTHER = [None, True, False, Color.RED, MyStr("sub"), (1, (2, 3)), {"a": 1},
         bytearray(b"ba"), frozenset({1})]
VALUES = INTS + FLOATS + STRS + BYTES + COMPLEX + LISTS + OTHER


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_deep(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def test_scalars_round_trip_with_their_types(server):
    jobs = [server.submit(H.identity, (v,)) for v in VALUES]
    for v, j in zip(VALUES, jobs):
        got = j()
        assert same(v, got), (v, got)
    nan = server.submit(H.identity, (float("nan"),))()
    assert isinstance(nan, float) and math.isnan(nan)


def test_results_as_plain_tuples_and_arguments_as_tuples(server):
    # the job's result is its whole argument tuple: tuples of every length
    # around the hand-written limit (16), in both directions
    for n in range(0, 20):
        args = tuple(VALUES[(i * 7) % len(VALUES)] for i in range(n))
        got = server.submit(H.pack_args, args)()
        assert type(got) is tuple and len(got) == n
        assert all(same(a, b) for a, b in zip(args, got)), (args, got)


def test_mixed_fast_and_slow_jobs_in_one_stream(server):
    vals = [i if i % 3 else (i, [i]) for i in range(3000)]
    jobs = [server.submit(H.identity, (v,)) for v in vals]
    assert [j() for j in jobs] == vals


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_every_pickle_protocol(fresh_server, proto):
    s = fresh_server(ncpus=1, proto=proto)
    vals = [1, -70000, 2**70, 1.5, "abc", b"xy", None, True, (1, "a")]
    assert [s.submit(H.identity, (v,))() for v in vals] == vals


def test_hand_written_pickles_are_standard_pickles():
    # what the worker would decode must also be what pickle makes of it:
    # the round trip above compares with the original; here pickle itself
    # reads a tuple of scalars in the opcodes the encoder uses
    data = b"\x80\x05(K\x01M\x00\x01J\x00\x00\x00\x80\x8a\x02\x00\x80G?\xf8\x00\x00\x00\x00\x00\x00\x8c\x01aC\x01b\x88\x89Nt."
    assert pickle.loads(data) == (1, 256, -2**31, -32768, 1.5, "a", b"b", True, False, None)


def test_encoder_output_is_read_by_pickle_and_reader_reads_pickles_output():
    # break the symmetry of the round trips above: the hand-written encoder
    # against pickle.loads, pickle.dumps against the hand-written reader
    from pp import _ppc
    handled = 0
    cases = VALUES + [tuple(VALUES[i:i + n]) for n in (1, 2, 3, 4, 16, 17)
                      for i in range(0, len(VALUES), 5)]
    for proto in (4, 5):
        for v in cases:
            data = _ppc._fast_dumps(v, proto)
            if data is not None:
                handled += 1
                assert data[:2] == bytes([0x80, proto])
                assert same_deep(pickle.loads(data), v), (v, data)
            for ref in (pickle.dumps(v, proto), strip_frame(pickle.dumps(v, proto))):
                got = _ppc._fast_loads(ref)
                if got is not None:
                    assert same_deep(got[0], v), (v, ref)
    assert handled > len(VALUES)  # the fast path really took most of them
    for bad in (b"", b"\x80", b"\x80\x05", b"\x80\x05K", b"\x80\x05K\x01", b"\x80\x05t.",
                b"\x80\x05\x8c\x05ab.", b"\x80\x05J\x01\x02.", b"\x80\x05K\x01K\x02.",
                b"\x80\x05(K\x01(K\x02t.", b"\x80\x02K\x01.", b"\x80\x05\x8a\x09" + b"\x00" * 9 + b".",
                b"\x80\x05h\x00.", b"\x80\x05K\x01a.", b"\x80\x05e.",
                b"\x80\x05\x8c\x08builtins\x8c\x04eval\x93.",
                b"\x80\x05\x8c\x08builtins\x8c\x07complex\x93K\x01K\x02\x86R.",
                b"\x80\x05\x8c\x08builtins(\x8c\x07complex\x93t."):
        assert _ppc._fast_loads(bad) is None, bad
    assert _ppc._fast_loads(b"\x80\x05]K\x01a.") == ([1],)
    assert _ppc._fast_loads(b"\x80\x05](e.") == ([],)


def strip_frame(data):
    # what the engine sends: a one-frame pickle without its FRAME opcode
    if len(data) > 11 and data[2] == 0x95:
        return data[:2] + data[11:]
    return data


def same_deep(a, b):
    if isinstance(a, tuple):
        return type(b) is tuple and len(a) == len(b) and all(same_deep(x, y) for x, y in zip(a, b))
    return same(a, b)


def test_lists_in_tuples_and_aliasing(server):
    # the seed's Mandelbrot chunk: (list of complex, int, list of complex)
    q = [complex(x / 7.0, -x / 3.0) for x in range(2500)]
    z = [0j] * 2500
    got = server.submit(H.pack_args, (q, 1000, z))()
    assert got == (q, 1000, z) and all(type(v) is complex for v in got[0])
    # the same list twice keeps being one list (the hand-written path
    # declines, _pickle keeps the identity)
    shared = [1, 2]
    a, b = server.submit(H.pack_args, (shared, shared))()
    assert a == b == [1, 2] and a is b
    from pp import _ppc
    assert _ppc._fast_dumps((shared, shared), 5) is None
    assert _ppc._fast_dumps(([1], [1]), 5) is not None


def test_large_data_is_left_to_the_large_data_path():
    # a big payload must not be copied by the hand-written path: it goes to
    # _pickle and, from 1 MB, to shared memory
    from pp import _ppc
    assert _ppc._fast_dumps(b"x" * (1 << 20), 5) is None
    assert _ppc._fast_dumps((b"x" * (300 << 10),), 5) is None
    assert _ppc._fast_dumps(([1.5] * 100000,), 5) is None
    assert _ppc._fast_dumps(([1.5] * 1000, b"y" * 1000), 5) is not None
