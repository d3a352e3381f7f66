"""The device registry: add, list, revoke, rotate. Every change is a ledger entry.

A device id is 1..64 characters from ``A-Z a-z 0-9 . _ -`` (it appears in MQTT topics
``anchor/<id>/...`` and as the COSE kid). A device key is a P-256 public key given as hex of its
SEC1 point (65-byte uncompressed, as `keygen` prints, or 33-byte compressed) or as a PEM file
(SubjectPublicKeyInfo); it is stored and written into the ledger entry as the 65-byte
uncompressed point.

Key history: `device_keys` holds every key with the entries between which it was valid, so
after a rotation or a revocation the older readings still verify against the key that was
registered when they were anchored (`ledger verify` rebuilds this history from the ledger
entries themselves and checks the table against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.storage.store import Store
from gateway.wire.es256 import load_public_key, point_bytes

DEVICE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_device_id(dev: str) -> str:
    if not DEVICE_ID.fullmatch(dev):
        raise ConfigError(
            f"invalid device id {dev!r}",
            "use 1..64 characters from A-Z a-z 0-9 . _ - (the id is part of MQTT topics)",
        )
    return dev


def parse_public_key(value: str) -> bytes:
    """HEX of a SEC1 point, or the path of a PEM file -> 65-byte uncompressed point."""
    text = value.strip()
    if re.fullmatch(r"(0x)?[0-9a-fA-F]+", text) and len(text) in (66, 130, 68, 132):
        return point_bytes(load_public_key(bytes.fromhex(text.removeprefix("0x"))))
    path = Path(value)
    if not path.is_file():
        raise ConfigError(
            f"--public-key {value[:80]!r} is neither a hex P-256 point nor a PEM file",
            "pass the 130 hex characters printed by 'keygen', or the path of a PEM public key",
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", "check the path") from e
    stripped = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{130}|[0-9a-fA-F]{66}", stripped):
        return point_bytes(load_public_key(bytes.fromhex(stripped.decode())))
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM public key",
                          "export the device's public key as PEM (SubjectPublicKeyInfo)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{path} is not a P-256 (secp256r1) public key",
                          "devices sign with ES256: give their P-256 key")
    return point_bytes(key)


@dataclass(frozen=True, slots=True)
class Change:
    dev: str
    action: str
    key: bytes
    entry: int
    checkpoint: str


def add(store: Store, dev: str, key: bytes) -> Change:
    check_device_id(dev)
    row = store.device(dev)
    if row is not None:
        what = "revoked" if row.status == "revoked" else "registered"
        raise ConfigError(f"device {dev!r} is already {what}",
                          "use 'device rotate' to change its key" if what == "registered"
                          else "a revoked id cannot come back; register the device under a new id")
    entry, cp = store.device_event(store.load_signer(), dev, key, "add")
    return Change(dev, "add", key, entry, cp)


def _active(store: Store, dev: str) -> Any:
    row = store.device(dev)
    if row is None:
        raise ConfigError(f"no device {dev!r} is registered",
                          "see 'iot-anchor device list' for the registered ids")
    if row.status != "active":
        raise ConfigError(f"device {dev!r} is already revoked", "nothing to do")
    return row


def revoke(store: Store, dev: str) -> Change:
    row = _active(store, dev)
    entry, cp = store.device_event(store.load_signer(), dev, bytes(row.key), "revoke")
    return Change(dev, "revoke", bytes(row.key), entry, cp)


def rotate(store: Store, dev: str, key: bytes) -> Change:
    row = _active(store, dev)
    if bytes(row.key) == key:
        raise ConfigError(f"device {dev!r} already has this key", "give the new public key")
    entry, cp = store.device_event(store.load_signer(), dev, key, "rotate")
    return Change(dev, "rotate", key, entry, cp)


def listing(store: Store) -> list[dict[str, Any]]:
    out = []
    for r in store.devices():
        out.append({
            "id": r.id, "status": r.status, "key": bytes(r.key).hex(), "entry": r.entry,
            "readings": r.readings, "last_seq": r.last_seq, "upto": r.upto,
        })
    return out
