"""Ledger entries: deterministic CBOR, strict decoding, hashes.

Oracles: a known-answer entry assembled byte by byte here from RFC 8949's encoding rules; an
independent checker of the deterministic-encoding rules of RFC 8949 §4.2.1 written below
(shortest heads, definite lengths, map keys sorted bytewise by their encodings); hashlib.
"""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ledger import entry as E
from gateway.ledger.entry import BatchEntry, DeviceEntry, EntryError

ROOT = hashlib.sha256(b"batch root").digest()
KEY = b"\x04" + hashlib.sha256(b"x").digest() + hashlib.sha256(b"y").digest()

# --------------------------------------------------------------------------- RFC 8949 checker


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, new position); asserts the shortest form (RFC 8949 §4.2.1)."""
    ib = data[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    assert info != 31, "indefinite length is not deterministic"
    if info < 24:
        return major, info, pos
    width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
    arg = int.from_bytes(data[pos : pos + width], "big")
    limit = {1: 24, 2: 256, 4: 65536, 8: 1 << 32}[width]
    assert arg >= limit, f"argument {arg} not in its shortest form"
    return major, arg, pos + width


def check_deterministic(data: bytes, pos: int = 0) -> int:
    """Walk one data item, asserting the deterministic rules; returns the end position."""
    major, arg, pos = _head(data, pos)
    if major in (0, 1):
        return pos
    if major in (2, 3):
        return pos + arg
    if major == 4:
        for _ in range(arg):
            pos = check_deterministic(data, pos)
        return pos
    if major == 5:
        prev_key = None
        for _ in range(arg):
            start = pos
            pos = check_deterministic(data, pos)
            key = data[start:pos]
            assert prev_key is None or prev_key < key, "map keys not sorted bytewise"
            prev_key = key
            pos = check_deterministic(data, pos)
        return pos
    raise AssertionError(f"unexpected major type {major} in an entry")


def check_whole(data: bytes) -> None:
    assert check_deterministic(data) == len(data)


# --------------------------------------------------------------------------- known answers


def tstr(s: str) -> bytes:
    b = s.encode()
    assert len(b) < 24
    return bytes([0x60 + len(b)]) + b


def test_batch_entry_known_answer() -> None:
    t = 1_700_000_000_000
    want = (
        b"\xa6"  # map of 6 pairs; keys in bytewise order of their encodings:
        + tstr("i") + b"\x00"
        + tstr("n") + b"\x18\x64"  # 100 needs one extra byte
        + tstr("t") + b"\x1b" + t.to_bytes(8, "big")  # > 2**32: eight bytes
        + tstr("kind") + tstr("batch")
        + tstr("prev") + b"\x58\x20" + bytes(32)
        + tstr("root") + b"\x58\x20" + ROOT
    )  # fmt: skip
    got = E.batch_entry(0, E.ZERO_HASH, ROOT, 100, t)
    assert got == want
    assert E.encode_entry(BatchEntry(i=0, prev=E.ZERO_HASH, t=t, root=ROOT, n=100)) == want
    assert E.decode_entry(want) == BatchEntry(i=0, prev=E.ZERO_HASH, t=t, root=ROOT, n=100)
    assert E.entry_hash(want) == hashlib.sha256(want).digest()
    assert E.entry_leaf_hash(want) == hashlib.sha256(b"\x00" + want).digest()


def test_device_entry_known_answer() -> None:
    prev = hashlib.sha256(b"entry 4").digest()
    want = (
        b"\xa7"
        + tstr("i") + b"\x05"
        + tstr("t") + b"\x1a" + (4_000_000_000).to_bytes(4, "big")
        + tstr("dev") + tstr("sensor-01")
        + tstr("key") + b"\x58\x41" + KEY
        + tstr("kind") + tstr("device")
        + tstr("prev") + b"\x58\x20" + prev
        + tstr("action") + tstr("rotate")
    )  # fmt: skip
    got = E.device_entry(5, prev, "sensor-01", KEY, "rotate", 4_000_000_000)
    assert got == want
    d = E.decode_entry(want)
    assert isinstance(d, DeviceEntry)
    assert (d.i, d.dev, d.key, d.action, d.kind) == (5, "sensor-01", KEY, "rotate", "device")


# --------------------------------------------------------------------------- properties

hashes = st.binary(min_size=32, max_size=32)
uints = st.integers(0, 2**64 - 1)


@st.composite
def entries(draw: st.DrawFn) -> E.Entry:
    i = draw(uints)
    prev = E.ZERO_HASH if i == 0 else draw(hashes)
    t = draw(uints)
    if draw(st.booleans()):
        n = draw(st.integers(1, 2**64 - 1))
        return BatchEntry(i=i, prev=prev, t=t, root=draw(hashes), n=n)
    dev = draw(st.text(min_size=1, max_size=40))
    key = b"\x04" + draw(st.binary(min_size=64, max_size=64))
    action = draw(st.sampled_from(E.DEVICE_ACTIONS))
    return DeviceEntry(i=i, prev=prev, t=t, dev=dev, key=key, action=action)


@settings(max_examples=300, deadline=None)
@given(entries())
def test_round_trip_and_determinism(e: E.Entry) -> None:
    data = E.encode_entry(e)
    check_whole(data)
    assert E.decode_entry(data) == e
    assert E.decode_entry(memoryview(data)) == e
    # cbor2 decodes it to the same map, and the keys are exactly the documented ones
    m = cbor2.loads(data)
    assert m["kind"] == e.kind and m["i"] == e.i and m["prev"] == e.prev


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_random_bytes_only_raises_entry_error(data: bytes) -> None:
    try:
        E.decode_entry(data)
    except EntryError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_rejected_or_changes_the_entry(data: st.DataObject) -> None:
    e = data.draw(entries())
    raw = bytearray(E.encode_entry(e))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        got = E.decode_entry(bytes(raw))
    except EntryError:
        return
    assert got != e  # decoding is injective: different bytes, different entry


def test_hash_chain() -> None:
    prev = E.ZERO_HASH
    chain = []
    for i in range(5):
        raw = E.batch_entry(i, prev, ROOT, i + 1, 1000 + i)
        chain.append(raw)
        prev = E.entry_hash(raw)
    for i in range(1, 5):
        assert E.decode_entry(chain[i]).prev == hashlib.sha256(chain[i - 1]).digest()


# --------------------------------------------------------------------------- strictness


def good_batch() -> dict[str, object]:
    return {"i": 3, "prev": ROOT, "kind": "batch", "root": ROOT, "n": 2, "t": 9}


def good_device() -> dict[str, object]:
    return {
        "i": 3, "prev": ROOT, "kind": "device", "t": 9, "dev": "d", "key": KEY, "action": "add"
    }


def with_(base: dict[str, object], **kw: object) -> dict[str, object]:
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return d


BAD_MAPS = [
    with_(good_batch(), extra=1),
    with_(good_batch(), n=...),
    with_(good_batch(), n=0),
    with_(good_batch(), n=-1),
    with_(good_batch(), i=1.0),
    with_(good_batch(), i=True),
    with_(good_batch(), t="9"),
    with_(good_batch(), prev=ROOT[:31]),
    with_(good_batch(), root="00" * 32),
    with_(good_batch(), i=0),  # entry 0 must have a zero prev
    with_(good_batch(), kind="Batch"),
    with_(good_batch(), kind=None),
    with_(good_batch(), dev="d"),
    with_(good_device(), action="delete"),
    with_(good_device(), key=KEY[:64]),
    with_(good_device(), key=b"\x02" + KEY[1:]),
    with_(good_device(), dev=""),
    with_(good_device(), dev=b"d"),
    with_(good_device(), root=ROOT),
    with_(good_device(), action=...),
    {1: 2},
    {"i": 1, 2: 3},
]


@pytest.mark.parametrize("m", BAD_MAPS)
def test_decode_rejects_bad_fields(m: dict[str, object]) -> None:
    with pytest.raises(EntryError):
        E.decode_entry(cbor2.dumps(m, canonical=True))


def test_decode_rejects_non_deterministic_encodings() -> None:
    good = E.encode_entry(BatchEntry(i=3, prev=ROOT, t=9, root=ROOT, n=2))
    E.decode_entry(good)
    variants = [
        cbor2.dumps(good_batch()),  # insertion order, not sorted
        good + b"\x00",  # trailing byte
        good.replace(b"\x61\x69\x03", b"\x61\x69\x18\x03"),  # i in a long form
        b"\xbf" + good[1:] + b"\xff",  # indefinite-length map
        cbor2.dumps([good_batch()]),
        cbor2.dumps(cbor2.CBORTag(24, good)),
        b"",
    ]
    for v in variants:
        assert v != good
        with pytest.raises(EntryError):
            E.decode_entry(v)


def test_encode_rejects_bad_entries() -> None:
    with pytest.raises(EntryError):
        E.batch_entry(0, ROOT, ROOT, 1, 0)  # entry 0 with a non-zero prev
    with pytest.raises(EntryError):
        E.batch_entry(1, ROOT, ROOT, 0, 0)
    with pytest.raises(EntryError):
        E.device_entry(1, ROOT, "d", KEY, "remove", 0)
    with pytest.raises(EntryError):
        E.device_entry(1, ROOT, "x" * 256, KEY, "add", 0)
    with pytest.raises(EntryError):
        E.decode_entry(b"\xa1" + b"\x61\x69" + b"\x5a" + (2000).to_bytes(4, "big") + bytes(2000))
