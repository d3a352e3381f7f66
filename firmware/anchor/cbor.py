# CBOR (RFC 8949) for the firmware: a deterministic encoder and a small strict decoder.
#
#   encode(obj) -> bytes                      deterministic encoding (RFC 8949 section 4.2.1)
#   encode_into(buf, obj)                     the same, appended to a bytearray
#   cbor_decode.decode(data) -> obj           one complete data item; CBORError on anything
#                                             malformed
#   cbor_types.Tag(tag, value)                a tagged item, both ways
#   cbor_types.CBORError                      what the encoder and the decoder raise
#
# Encoder types: int (-2^64 .. 2^64-1), float, str, bytes/bytearray/memoryview, list/tuple,
# dict, bool, None, Tag. Deterministic means: every head in its shortest form, definite lengths
# only, map keys sorted bytewise by their encoded bytes, and a float in the shortest of
# float16/32/64 that keeps its value exactly (NaN as f97e00, as section 4.2.2 suggests).
# MicroPython dicts keep no order, so the map's bytes are built from the sorted encoded keys.
#
# The decoder (cbor_decode.py) reads what the gateway sends (acks: maps, arrays, ints, bytes,
# text, floats, bool, null) and what tests feed it: definite lengths only (indefinite ones,
# reserved additional-info values, truncation and trailing bytes all raise CBORError), a nesting
# limit, and no duplicate map keys. It does not check that its input is deterministically
# encoded.
#
# This module holds the encoder, what signing a reading needs; the decoder and cbor_types.py
# (Tag, CBORError, the encoder's errors) are its cold companions (COLD), imported where they are
# used: encode_into loads cbor_types only for a Tag or for what it cannot encode.

import struct

COLD = ("cbor_decode", "cbor_types")


def _error(*args):
    # the encoder's errors (cbor_types.encode_error says which): rare, so loaded only then
    from anchor.cbor_types import encode_error

    return encode_error(*args)


# ---- encoder ----


def _head(buf, major, n):
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(mt | 25)
        buf.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        buf.append(mt | 26)
        buf.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        buf.append(mt | 27)
        buf.extend(n.to_bytes(8, "big"))
    else:
        raise _error()


def _half_bits(x):
    """IEEE half-precision bits of float x if that keeps its value exactly, else None."""
    # Requires: x is exactly representable as a float32.
    b = struct.unpack(">I", struct.pack(">f", x))[0]
    sign = (b >> 16) & 0x8000
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 0xFF:
        return sign | 0x7C00 if not m else 0x7E00
    if e == 0:
        return sign if not m else None  # float32 subnormals are below half's range
    e -= 127
    if -14 <= e <= 15:
        if m & 0x1FFF:
            return None
        return sign | ((e + 15) << 10) | (m >> 13)
    if -24 <= e < -14:  # a half subnormal: (1.m * 2^e) = f * 2^-24
        sh = -e - 1  # 14..23
        f = (m | 0x800000) >> sh
        if (f << sh) != (m | 0x800000):
            return None
        return sign | f
    return None


def _float(buf, x):
    if x != x:  # NaN
        buf.extend(b"\xf9\x7e\x00")
        return
    try:
        f32 = struct.pack(">f", x)
    except OverflowError:  # CPython; MicroPython packs inf, which fails the test below
        f32 = b"\x7f\x80\x00\x00"
    if struct.unpack(">f", f32)[0] == x:
        h = _half_bits(x)
        if h is not None:
            buf.append(0xF9)
            buf.extend(struct.pack(">H", h))
        else:
            buf.append(0xFA)
            buf.extend(f32)
    else:
        buf.append(0xFB)
        buf.extend(struct.pack(">d", x))


def encode_into(buf, obj):
    """Append the deterministic encoding of obj to bytearray buf."""
    if obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif obj is None:
        buf.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(buf, 0, obj)
        else:
            _head(buf, 1, -1 - obj)
    elif isinstance(obj, str):
        b = obj.encode()
        _head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, float):
        _float(buf, obj)
    elif isinstance(obj, (list, tuple)):
        _head(buf, 4, len(obj))
        for item in obj:
            encode_into(buf, item)
    elif isinstance(obj, dict):
        items = []
        for k in obj:
            kb = bytearray()
            encode_into(kb, k)
            items.append((bytes(kb), k))
        items.sort()
        _head(buf, 5, len(items))
        for i in range(len(items)):
            kb, k = items[i]
            if i and kb == items[i - 1][0]:
                raise _error(k)
            buf.extend(kb)
            encode_into(buf, obj[k])
    else:   # a Tag, or an error (cbor_types.py)
        from anchor.cbor_types import encode_other

        encode_other(buf, obj)


def encode(obj):
    buf = bytearray()
    encode_into(buf, obj)
    return bytes(buf)

