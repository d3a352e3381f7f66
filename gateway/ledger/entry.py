"""Ledger entries: deterministic CBOR maps, hash-chained, and the leaves of the ledger tree.

Entry i is a CBOR map with text keys, encoded deterministically (RFC 8949 §4.2.1: shortest
integer and length forms, definite lengths, keys sorted bytewise by their encoding):

batch entry (one per committed batch of readings)::

    {"i": i, "prev": h32, "kind": "batch", "root": h32, "n": batch size >= 1, "t": ms}

device entry (a change to the device registry)::

    {"i": i, "prev": h32, "kind": "device", "t": ms,
     "dev": device id (text), "key": 65-byte SEC1 uncompressed P-256 point (0x04 || X || Y),
     "action": "add" | "revoke" | "rotate"}

record entries (every other kind: rule sets, datasets, models, ...)::

    {"i": i, "prev": h32, "kind": KIND, "t": ms, ...the kind's own fields}

  Each kind's fields are declared once, in `RECORD_KINDS` (a `RecordKind`: required and
  optional keys, a check of their values, a size limit); docs/protocol.md specifies them.

- ``i`` is the entry's position (0-based) in the ledger and in the ledger tree.
- ``prev`` = `entry_hash` of entry i-1: SHA-256 of its bytes; 32 zero bytes for entry 0.
- ``t`` is the gateway's clock in integer milliseconds since the Unix epoch.
- ``root`` is the RFC 6962 root of the batch's readings (leaf = COSE message bytes).
- ``key`` for "add" and "rotate" is the device key valid from this entry on; for "revoke" it is
  the key being revoked (the device's current key), so every device entry names a key.

The ledger tree is RFC 6962 over the entry bytes: leaf i = `entry_leaf_hash(bytes of entry i)`
= SHA-256(0x00 || entry bytes). The hash chain uses `entry_hash` = SHA-256(entry bytes) (no
prefix); the two are different on purpose.

`decode_entry` is strict: the exact key set for the kind, exact types, and the bytes must be
the deterministic encoding of what they decode to. Anything else raises `EntryError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.errors import IntegrityError
from gateway.ledger.merkle import HASH_SIZE, leaf_hash

__all__ = [
    "ZERO_HASH",
    "DEVICE_ACTIONS",
    "MAX_ENTRY_SIZE",
    "EntryError",
    "BatchEntry",
    "DeviceEntry",
    "RecordEntry",
    "RecordKind",
    "RECORD_KINDS",
    "Entry",
    "encode_entry",
    "batch_entry",
    "device_entry",
    "decode_entry",
    "entry_hash",
    "entry_leaf_hash",
]

ZERO_HASH = bytes(HASH_SIZE)
DEVICE_ACTIONS = ("add", "revoke", "rotate")
SEC1_KEY_SIZE = 65
MAX_ENTRY_SIZE = 1024  # batch and device entries: one with a 255-byte id is about 400 bytes
_MAX_UINT64 = (1 << 64) - 1


class EntryError(IntegrityError):
    """Ledger entry bytes or fields are malformed."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what, hint or "the ledger entry is corrupt or was not written by us")


@dataclass(frozen=True, slots=True)
class BatchEntry:
    i: int
    prev: bytes
    t: int
    root: bytes
    n: int
    kind: str = "batch"


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    i: int
    prev: bytes
    t: int
    dev: str
    key: bytes
    action: str
    kind: str = "device"


@dataclass(frozen=True, slots=True)
class RecordEntry:
    """An entry of a record kind: `fields` are its keys other than i, prev, kind and t."""

    i: int
    prev: bytes
    t: int
    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class RecordKind:
    """What entries of one record kind hold. `check(fields)` raises EntryError for a value
    that is wrong; the key sets are checked before it runs."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    check: Callable[[dict[str, Any]], None] = lambda fields: None
    max_size: int = 64 * 1024


# Every record kind the ledger knows; a kind not here is refused by decode_entry.
RECORD_KINDS: dict[str, RecordKind] = {}

Entry = BatchEntry | DeviceEntry | RecordEntry
_RESERVED = frozenset({"i", "prev", "kind", "t"})


def _uint(value: Any, name: str, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= _MAX_UINT64:
        raise EntryError(f"entry field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _hash(value: Any, name: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise EntryError(f"entry field {name!r} must be {HASH_SIZE} bytes")
    return value


def _validate(e: Entry) -> None:
    _uint(e.i, "i")
    _hash(e.prev, "prev")
    if e.i == 0 and e.prev != ZERO_HASH:
        raise EntryError("entry 0 must have prev = 32 zero bytes")
    _uint(e.t, "t")
    if isinstance(e, RecordEntry):
        spec = RECORD_KINDS.get(e.kind)
        if spec is None:
            raise EntryError(f"entry kind {e.kind!r} is unknown")
        keys = set(e.fields)
        if keys & _RESERVED or not spec.required <= keys <= spec.required | spec.optional:
            raise EntryError(f"{e.kind} entry keys are {sorted(keys)}, expected "
                             f"{sorted(spec.required)} and optionally {sorted(spec.optional)}")
        spec.check(e.fields)
        return
    if isinstance(e, BatchEntry):
        if e.kind != "batch":
            raise EntryError(f"a batch entry has kind 'batch', not {e.kind!r}")
        _hash(e.root, "root")
        _uint(e.n, "n", 1)
    else:
        if e.kind != "device":
            raise EntryError(f"a device entry has kind 'device', not {e.kind!r}")
        if type(e.dev) is not str or not e.dev or len(e.dev.encode()) > 255:
            raise EntryError(f"entry field 'dev' must be a 1..255-byte text id, got {e.dev!r}")
        if type(e.key) is not bytes or len(e.key) != SEC1_KEY_SIZE or e.key[0] != 0x04:
            raise EntryError("entry field 'key' must be a 65-byte uncompressed SEC1 point")
        if e.action not in DEVICE_ACTIONS:
            raise EntryError(f"entry field 'action' must be one of {DEVICE_ACTIONS}")


def _as_map(e: Entry) -> dict[str, Any]:
    if isinstance(e, RecordEntry):
        return {"i": e.i, "prev": e.prev, "kind": e.kind, "t": e.t, **e.fields}
    if isinstance(e, BatchEntry):
        return {"i": e.i, "prev": e.prev, "kind": "batch", "root": e.root, "n": e.n, "t": e.t}
    return {
        "i": e.i,
        "prev": e.prev,
        "kind": "device",
        "t": e.t,
        "dev": e.dev,
        "key": e.key,
        "action": e.action,
    }


def encode_entry(entry: Entry) -> bytes:
    """Deterministic CBOR bytes of a checked entry. Raises EntryError on a bad field."""
    _validate(entry)
    raw = cbor2.dumps(_as_map(entry), canonical=True)
    limit = max_entry_size(entry.kind)
    if len(raw) > limit:
        raise EntryError(f"a {entry.kind} entry of {len(raw)} bytes is over the limit of "
                         f"{limit}", "make the record smaller")
    return raw


def max_entry_size(kind: str) -> int:
    spec = RECORD_KINDS.get(kind)
    return MAX_ENTRY_SIZE if spec is None else spec.max_size


def record_entry(i: int, prev: bytes, kind: str, fields: dict[str, Any], t: int) -> bytes:
    """Bytes of record entry i of `kind`."""
    return encode_entry(RecordEntry(i=i, prev=prev, t=t, kind=kind, fields=dict(fields)))


def batch_entry(i: int, prev: bytes, root: bytes, n: int, t: int) -> bytes:
    """Bytes of batch entry i: `encode_entry(BatchEntry(i, prev, t, root, n))`."""
    return encode_entry(BatchEntry(i=i, prev=prev, t=t, root=root, n=n))


def device_entry(i: int, prev: bytes, dev: str, key: bytes, action: str, t: int) -> bytes:
    """Bytes of device entry i: `encode_entry(DeviceEntry(i, prev, t, dev, key, action))`."""
    return encode_entry(DeviceEntry(i=i, prev=prev, t=t, dev=dev, key=key, action=action))


_BATCH_KEYS = frozenset({"i", "prev", "kind", "root", "n", "t"})
_DEVICE_KEYS = frozenset({"i", "prev", "kind", "t", "dev", "key", "action"})


def decode_entry(data: bytes | bytearray | memoryview) -> Entry:
    """Strictly decode entry bytes. Raises EntryError naming what is wrong."""
    raw = bytes(data)
    largest = max([MAX_ENTRY_SIZE, *(k.max_size for k in RECORD_KINDS.values())])
    if len(raw) > largest:
        raise EntryError(f"entry is {len(raw)} bytes, more than {largest}")
    if not raw or raw[0] >> 5 != 5:  # major type 5 = map
        raise EntryError("entry bytes are not a CBOR map")
    try:
        obj = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, MemoryError) as e:
        raise EntryError(f"entry bytes are not valid CBOR ({e})") from None
    if not isinstance(obj, dict) or not all(type(k) is str for k in obj):
        raise EntryError("entry is not a CBOR map with text keys")
    kind = obj.get("kind")
    entry: Entry
    if kind == "batch":
        if set(obj) != _BATCH_KEYS:
            raise EntryError(f"batch entry keys are {sorted(obj)}, expected {sorted(_BATCH_KEYS)}")
        entry = BatchEntry(i=obj["i"], prev=obj["prev"], t=obj["t"], root=obj["root"], n=obj["n"])
    elif kind == "device":
        if set(obj) != _DEVICE_KEYS:
            raise EntryError(
                f"device entry keys are {sorted(obj)}, expected {sorted(_DEVICE_KEYS)}"
            )
        entry = DeviceEntry(
            i=obj["i"],
            prev=obj["prev"],
            t=obj["t"],
            dev=obj["dev"],
            key=obj["key"],
            action=obj["action"],
        )
    elif type(kind) is str and kind in RECORD_KINDS:
        fields = {k: v for k, v in obj.items() if k not in _RESERVED}
        if not _RESERVED <= set(obj):
            raise EntryError(f"{kind} entry keys are {sorted(obj)}, missing "
                             f"{sorted(_RESERVED - set(obj))}")
        entry = RecordEntry(i=obj["i"], prev=obj["prev"], t=obj["t"], kind=kind, fields=fields)
    else:
        raise EntryError(f"entry kind {kind!r} is unknown (known: batch, device, "
                         f"{', '.join(sorted(RECORD_KINDS)) or 'no record kinds'})")
    if encode_entry(entry) != raw:
        raise EntryError("entry bytes are not in deterministic CBOR encoding")
    return entry


def entry_hash(data: bytes | bytearray | memoryview) -> bytes:
    """SHA-256(entry bytes): the value the next entry's `prev` must hold."""
    return hashlib.sha256(data).digest()


def entry_leaf_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The entry's leaf in the ledger tree: SHA-256(0x00 || entry bytes)."""
    return leaf_hash(data)
