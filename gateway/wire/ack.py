"""The anchoring ack a gateway sends a device on `anchor/<id>/ack` (docs/protocol.md).

Deterministic CBOR {"upto": int, "seqs": [uint], "entry": uint}; keys in bytewise order of
their encoding: "seqs", "upto", "entry". `upto` is -1 until the device's seq 0 is anchored.
"""

from __future__ import annotations

from collections.abc import Iterable

import cbor2

from gateway.wire.cbor import head


def encode_ack(upto: int | None, seqs: Iterable[int], entry: int) -> bytes:
    """The ack payload. Encoded by hand rather than by cbor2 (a few microseconds per ack; a
    gateway at 10,000 readings/s from 1,000 devices sends about 2,500 acks/s);
    tests/unit/test_wire_ack.py checks it against cbor2's canonical encoding."""
    up = -1 if upto is None else upto
    ordered = sorted(seqs)
    return b"".join((
        b"\xa3\x64seqs", head(4, len(ordered)), *(head(0, s) for s in ordered),
        b"\x64upto", head(0, up) if up >= 0 else head(1, -1 - up),
        b"\x65entry", head(0, entry),
    ))


def decode_ack(payload: bytes) -> tuple[int, list[int], int]:
    """An ack -> (upto, seqs, entry); upto -1 = none anchored yet. Raises ValueError (or
    cbor2's decode error, a ValueError) on anything that is not an ack."""
    d = cbor2.loads(payload)
    if not isinstance(d, dict):
        raise ValueError("ack is not a map")
    upto = d.get("upto")
    seqs = d.get("seqs") or []
    return (-1 if upto is None else int(upto)), [int(s) for s in seqs], int(d.get("entry", -1))
