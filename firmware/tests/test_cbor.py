# CBOR tests under MicroPython.
# Run: micropython firmware/tests/test_cbor.py [test_name ...]
#
# Expected bytes: RFC 8949 appendix A (examples of encoded data items) for every example that is
# already in deterministic form, and RFC 8949 section 4.2.1 for the key order. A few more
# (float boundaries) are worked out by hand from IEEE 754 and noted where they appear.
# tests/firmware/test_crosscheck.py also compares the encoder with cbor2 (canonical=True) and
# the decoder with cbor2's output on random values.

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")
sys.path.insert(0, _here)

import runner
from runner import h, raises

from anchor import Error
from anchor.cbor import encode, encode_into
from anchor.cbor_decode import decode
from anchor.cbor_types import CBORError, Tag

# (value, RFC 8949 appendix A encoding)
RFC_A = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (0.0, "f90000"), (-0.0, "f98000"), (1.0, "f93c00"), (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"), (65504.0, "f97bff"), (100000.0, "fa47c35000"),
    (1.0e300, "fb7e37e43c8800759c"), (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"), (-4.0, "f9c400"), (-4.1, "fbc010666666666666"),
    (float("inf"), "f97c00"), (float("-inf"), "f9fc00"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"), ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
     "a56161614161626142616361436164614461656145"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
]

# Appendix A items that are valid but not deterministic: decode only.
RFC_A_DECODE_ONLY = [
    ("f97e00", "nan"), ("fa7f800000", float("inf")), ("fb7ff0000000000000", float("inf")),
    ("fa47c35000", 100000.0), ("f7", None),  # undefined decodes as None
    ("c074323031332d30332d32315432303a30343a30305a", Tag(0, "2013-03-21T20:04:00Z")),
]


def test_rfc8949_appendix_a_encode():
    for value, want in RFC_A:
        got = encode(value)
        assert got == h(want), "%r: %s != %s" % (value, got.hex(), want)


def test_rfc8949_appendix_a_decode():
    for value, enc in RFC_A:
        got = decode(h(enc))
        if isinstance(value, float):
            assert isinstance(got, float) and got == value, enc
        else:
            assert got == value, enc
    for enc, value in RFC_A_DECODE_ONLY:
        got = decode(h(enc))
        if value == "nan":
            assert got != got
        else:
            assert got == value, enc


def test_map_keys_sorted_bytewise_rfc8949_4_2_1():
    # Section 4.2.1's example order: 10, 100, -1, "z", "aa", [100], [-1], false (lists cannot
    # be dict keys here, so they are left out).
    m = {False: 8, "aa": 5, -1: 3, "z": 4, 100: 2, 10: 1}
    assert encode(m) == h("a6 0a01 186402 2003 617a04 62616105 f408")


def test_text_key_order_is_length_then_bytes():
    # Short text keys: the head carries the length, so shorter keys come first.
    m = {"prev": 1, "v": 2, "ts": 3, "dev": 4, "seq": 5, "data": 6}
    assert encode(m) == h("a6 617602 62747303 6364657604 6373657105 646461746106 647072657601")
    # 24+ byte keys use a two-byte head (0x78 nn) and sort after all the shorter ones.
    k24 = "k" * 24
    assert encode({k24: 1, "zz": 2}) == b"\xa2\x62zz\x02\x78\x18" + k24.encode() + b"\x01"
    # UTF-8 bytes, not code points, decide: "\u00e9" (c3 a9) sorts after "z" (7a) at equal length.
    assert encode({"\u00e9": 1, "zz": 2}) == h("a2 627a7a02 62c3a901")


def test_integer_boundaries_shortest_form():
    cases = [(23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (65535, "19ffff"),
             (65536, "1a00010000"), (4294967295, "1affffffff"), (4294967296, "1b0000000100000000"),
             (-24, "37"), (-25, "3818"), (-256, "38ff"), (-257, "390100"),
             (-4294967296, "3affffffff"), (-4294967297, "3b0000000100000000")]
    for v, enc in cases:
        assert encode(v) == h(enc), v
        assert decode(h(enc)) == v
    assert raises(CBORError, encode, 1 << 64)
    assert raises(CBORError, encode, -(1 << 64) - 1)


def test_floats_shortest_exact_form():
    # By hand from IEEE 754: 65504 is half's max; 65520 rounds to half infinity so it needs
    # float32; 2^-24 is the smallest half subnormal, 2^-25 is not a half; 2^-14 * (1 + 2^-10)
    # needs half's full mantissa; 1/3 and 0.1 are not exact in float32.
    cases = [(65520.0, "fa477ff000"), (2.0**-24, "f90001"), (2.0**-25, "fa33000000"),
             (3 * 2.0**-24, "f90003"), (2.0**-14 * (1 + 2.0**-10), "f90401"),
             (1 + 2.0**-10, "f93c01"), (1 + 2.0**-11, "fa3f801000"), (21.5, "f94d60"),
             (-2.0, "f9c000"), (16777216.0, "fa4b800000"), (1013.25, "fa447d5000")]
    for v, enc in cases:
        assert encode(v) == h(enc), "%r -> %s" % (v, encode(v).hex())
        assert decode(h(enc)) == v
    nan = encode(float("nan"))
    assert nan == h("f97e00")


def test_bytes_like_and_tuples():
    assert encode(bytearray(b"ab")) == h("426162")
    assert encode(memoryview(b"ab")) == h("426162")
    assert encode((1, 2)) == h("820102")
    buf = bytearray(b"\xff")
    encode_into(buf, 1)
    assert buf == b"\xff\x01"


def test_encode_rejects():
    assert raises(CBORError, encode, object())
    assert raises(CBORError, encode, {1: set()})
    assert raises(Error, encode, object())  # CBORError is an anchor.Error


def test_decode_rejects_malformed():
    bad = [
        "", "18", "19 00", "1a 0000", "1b 00000000000000", "62 61", "43 0102", "82 01",
        "a1 01", "a2 0102 03", "5f 41 00 ff", "9f ff", "bf ff", "7f ff",  # indefinite
        "1c", "1d", "1e", "3c", "ff", "f8 20", "f0", "01 02",  # reserved, break, trailing
        "5b ffffffffffffffff", "9b 0000000100000000 00", "bb 0000000100000000",  # huge lengths
        "a2 0101 0102",  # duplicate key
        "a1 80 01",  # array as map key
        "62 c328",  # invalid UTF-8
    ]
    for enc in bad:
        assert raises(CBORError, decode, h(enc)), enc


def test_decode_nesting_limit():
    deep = b"\x81" * 16 + b"\x01"
    assert decode(deep) is not None
    assert raises(CBORError, decode, b"\x81" * 40 + b"\x01")
    assert raises(CBORError, decode, b"\xd8\x18" * 40 + b"\x01")


def test_round_trip_ack_shape():
    # The gateway's ack (docs/protocol.md): keys in bytewise order "seqs" < "upto" < "entry".
    ack = {"upto": 41, "seqs": [43, 44, 100000], "entry": 7}
    enc = encode(ack)
    assert enc == h("a3 6473657173 83182b182c1a000186a0 647570746f1829 65656e74727907")
    assert decode(enc) == ack


runner.main(globals())
