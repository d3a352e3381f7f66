# The CBOR decoder: one complete data item, strictly (cbor.py says what is accepted). A cold
# companion of cbor.py (cbor.COLD): Device.load uses it to read last.cose at start-up, and the
# device loop drops it then (acks are decoded by device.decode_ack, small enough to stay loaded);
# kept apart from the encoder also so that each compiles from source in a small heap.

import struct

from micropython import const

from anchor.cbor_types import CBORError, Tag

_MAX_DEPTH = const(16)


# One recursive function (each function costs RAM on a board, so no reader class): returns the
# item at data[i] and the offset after it.


def _item(b, i, depth):
    if depth > _MAX_DEPTH:
        raise CBORError("CBOR nested deeper than %d" % _MAX_DEPTH)
    end = len(b)
    if i >= end:
        raise CBORError("truncated CBOR at offset %d" % i)
    ib = b[i]
    major = ib >> 5
    ai = ib & 31
    i += 1
    if ai < 24:
        n = ai
    elif ai < 28:
        k = 1 << (ai - 24)  # 1, 2, 4, 8 bytes
        if i + k > end:
            raise CBORError("truncated CBOR at offset %d" % i)
        n = int.from_bytes(b[i:i + k], "big")
        if major == 7 and ai > 24:  # float16/32/64
            if k == 2:
                e = (n >> 10) & 0x1F
                m = n & 0x3FF
                if e == 31:
                    v = float("nan") if m else float("inf")
                else:
                    v = (m + (1024 if e else 0)) * 2.0 ** ((e or 1) - 25)
                n = -v if n & 0x8000 else v
            else:
                n = struct.unpack(">f" if k == 4 else ">d", b[i:i + k])[0]
            return n, i + k
        i += k
    elif ai == 31:
        raise CBORError("indefinite-length CBOR is not supported")
    else:
        raise CBORError("reserved CBOR additional information %d" % ai)
    if major < 2:
        return (n if major == 0 else -1 - n), i
    if major < 4:
        if n > end - i:
            raise CBORError("truncated CBOR string at offset %d" % i)
        v = bytes(b[i:i + n])
        if major == 3:
            try:
                v = str(v, "utf-8")
            except UnicodeError:
                raise CBORError("invalid UTF-8 in a CBOR text string")
        return v, i + n
    if major == 6:
        v, i = _item(b, i, depth + 1)
        return Tag(n, v), i
    if major == 7:
        if 20 <= n <= 23 and ai < 24:  # false, true, null, undefined (as None)
            return (False, True, None, None)[n - 20], i
        raise CBORError("unassigned CBOR simple value %d" % n)
    # arrays and maps: each item takes at least one byte
    if n * (major - 3) > end - i:
        raise CBORError("truncated CBOR container at offset %d" % i)
    if major == 4:
        v = []
        for _ in range(n):
            x, i = _item(b, i, depth + 1)
            v.append(x)
        return v, i
    v = {}
    for _ in range(n):
        k, i = _item(b, i, depth + 1)
        if not isinstance(k, (int, str, bytes, float)) and k is not None:
            raise CBORError("unsupported CBOR map key type")
        if k in v:
            raise CBORError("duplicate CBOR map key %r" % (k,))
        v[k], i = _item(b, i, depth + 1)
    return v, i


def decode(data):
    """Decode exactly one CBOR data item from data (bytes-like)."""
    b = memoryview(data)
    obj, i = _item(b, 0, 0)
    if i != len(b):
        raise CBORError("%d trailing bytes after the CBOR item" % (len(b) - i))
    return obj
