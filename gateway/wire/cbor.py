"""Deterministic CBOR encoding (RFC 8949 section 4.2.1), the firmware's rules.

Shortest integer and length forms, definite lengths only, map keys sorted bytewise by their
encoding, floats in the shortest of half, single and double precision that keeps the value
exactly (section 4.2.2). `encode` makes the same bytes as `firmware/anchor/cbor.py` for the
same value; tests/unit/test_wire_cbor.py checks it against RFC 8949 appendix A and cbor2.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any


def head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` with argument n (0 <= n < 2**64)."""
    out = bytearray()
    append_head(major, n, out)
    return bytes(out)


def append_head(major: int, n: int, out: bytearray) -> None:
    """Append a CBOR head (major type, argument) in its shortest form."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(mt | 26)
        out += n.to_bytes(4, "big")
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out += n.to_bytes(8, "big")
    else:
        raise ValueError(f"integer {n} does not fit in 64 bits")




def _float(x: float, out: bytearray) -> None:
    """Shortest exact float (RFC 8949 §4.2.2 preferred serialisation)."""
    if math.isnan(x):
        out += b"\xf9\x7e\x00"
        return
    try:
        half = struct.pack(">e", x)
        if struct.unpack(">e", half)[0] == x:
            out.append(0xF9)
            out += half
            return
    except OverflowError:
        pass
    try:
        single = struct.pack(">f", x)
        if struct.unpack(">f", single)[0] == x:
            out.append(0xFA)
            out += single
            return
    except OverflowError:
        pass
    out.append(0xFB)
    out += struct.pack(">d", x)




def _encode(obj: Any, out: bytearray) -> None:
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            append_head(0, obj, out)
        else:
            append_head(1, -1 - obj, out)
    elif isinstance(obj, float):
        _float(obj, out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        append_head(2, len(b), out)
        out += b
    elif isinstance(obj, str):
        b = obj.encode()
        append_head(3, len(b), out)
        out += b
    elif isinstance(obj, (list, tuple)):
        append_head(4, len(obj), out)
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            key_buf = bytearray()
            _encode(k, key_buf)
            items.append((bytes(key_buf), v))
        items.sort(key=lambda kv: kv[0])
        append_head(5, len(items), out)
        for key_bytes, v in items:
            out += key_bytes
            _encode(v, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")




def encode(obj: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1) of ints, floats, str, bytes, lists and maps."""
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


