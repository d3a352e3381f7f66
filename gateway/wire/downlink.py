"""The authenticated downlink: what the gateway sends a device and what the device confirms
(docs/protocol.md, "The downlink"). Pure: formats, sealing and opening, no keys kept, no I/O.

A sealed message (an ack on `anchor/<id>/ack`, a command on `anchor/<id>/cmd`) is a COSE_Mac0
(RFC 9052 section 6.2) with HMAC 256/256 (COSE alg 5) under the device's downlink key, the
topic's UTF-8 bytes as external AAD::

    17([protected = h'a10105' ({1: 5}), unprotected = {}, payload = bstr .cbor Ack/Command,
        tag = bstr .size 32])
    tag = HMAC-SHA-256(K, ["MAC0", h'a10105', topic, payload])        (CBOR-encoded array)

Every payload carries `ctr`, a counter that only grows per device: the device refuses one it
has seen (replayed) or one below its window (stale). K is per device: HKDF-SHA-256 (RFC 5869,
salt "iot-anchor downlink v1", info the device id) over the x coordinate of the ECDH point of
the device's key and the gateway's downlink key (`device_key`).

A confirmation (`anchor/<id>/confirm`) is a COSE_Sign1 by the device key with a reading's
protected header ({1: -7, 4: kid}) over
{"v": 1, "dev", "cmd": command id, "op", "ok": bool, "result": map | "reason": text}.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gateway.wire.cbor import head

ALG_HMAC_256 = 5  # COSE: HMAC 256/256
PROTECTED = b"\xa1\x01\x05"  # {1: 5}
_HEAD = b"\xd1\x84\x43" + PROTECTED + b"\xa0"  # 17([h'a10105', {}, ...
_MAC0 = b"\x84\x64MAC0\x43" + PROTECTED
HKDF_SALT = b"iot-anchor downlink v1"
TAG_BYTES = 32
MAX_CONFIRMATION = 2048
OPS = ("interval", "output", "ping")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class DownlinkError(ValueError):
    """A downlink message refused; `reason` is one word (malformed, forged, replayed, stale,
    or for confirmations bad_signature, wrong_device, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- keys


def device_key(shared_x: bytes, dev: str) -> bytes:
    """The 32-byte downlink MAC key of device `dev` from the ECDH x coordinate (32 bytes):
    HKDF-SHA-256, one output block (T(1) = HMAC(PRK, info || 0x01))."""
    prk = hmac.digest(HKDF_SALT, shared_x, "sha256")
    return hmac.digest(prk, dev.encode() + b"\x01", "sha256")


# --------------------------------------------------------------------------- sealing


def _bstr(b: bytes) -> bytes:
    return head(2, len(b)) + b


def seal(key: bytes, topic: str, payload: bytes) -> bytes:
    """The COSE_Mac0 message of `payload` for `topic` under `key`."""
    pb = _bstr(payload)
    tag = hmac.digest(key, _MAC0 + _bstr(topic.encode()) + pb, "sha256")
    return _HEAD + pb + b"\x58\x20" + tag


def open_sealed(key: bytes, topic: str, msg: bytes) -> bytes:
    """The payload of a sealed message, its tag checked; DownlinkError("malformed" or
    "forged") otherwise. The same checks as the firmware's downlink.Guard.open."""
    n = len(msg)
    if n < 42 or msg[:7] != _HEAD or msg[n - 34:n - 32] != b"\x58\x20":
        raise DownlinkError("malformed", "not a COSE_Mac0 of the downlink layout")
    a = msg[7]
    i = 8
    if a >> 5 != 2:
        raise DownlinkError("malformed", "the payload is not a byte string")
    a &= 31
    if a == 24:
        a, i = msg[8], 9
    elif a == 25:
        a, i = msg[8] << 8 | msg[9], 10
    elif a > 23:
        raise DownlinkError("malformed", "payload length")
    if i + a != n - 34:
        raise DownlinkError("malformed", "payload length")
    tag = hmac.digest(key, _MAC0 + _bstr(topic.encode()) + msg[7:n - 34], "sha256")
    if not hmac.compare_digest(tag, msg[n - 32:]):
        raise DownlinkError("forged", "the MAC does not match")
    return msg[i:n - 34]


# --------------------------------------------------------------------------- acks


def ack_payload(ctr: int, upto: int, seqs: Iterable[int], entry: int) -> bytes:
    """{"ctr", "seqs", "upto", "entry"} in deterministic CBOR (keys in bytewise order), by hand
    (a few microseconds per ack: one goes out per device per commit; tests/unit/
    test_wire_encoding.py checks it against cbor2's canonical encoding)."""
    ordered = sorted(seqs)
    return b"".join((
        b"\xa4\x63ctr", head(0, ctr),
        b"\x64seqs", head(4, len(ordered)), *(head(0, s) for s in ordered),
        b"\x64upto", head(0, upto) if upto >= 0 else head(1, -1 - upto),
        b"\x65entry", head(0, entry),
    ))


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def decode_ack_payload(payload: bytes) -> tuple[int, int, list[int], int]:
    """(ctr, upto, seqs, entry) of an ack payload; DownlinkError("malformed") otherwise."""
    try:
        d = cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError) as e:
        raise DownlinkError("malformed", f"not CBOR ({e})") from None
    if not isinstance(d, dict):
        raise DownlinkError("malformed", "not a map")
    ctr, upto, seqs, entry = d.get("ctr"), d.get("upto"), d.get("seqs", []), d.get("entry", -1)
    if not _uint(ctr) or not isinstance(upto, int) or isinstance(upto, bool) or upto < -1 \
            or not isinstance(seqs, list) or not all(_uint(s) for s in seqs) \
            or not isinstance(entry, int):
        raise DownlinkError("malformed", "not an ack")
    assert isinstance(ctr, int)
    return ctr, upto, seqs, entry


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Command:
    """A command to one device. `id`: the ledger index of the entry that ordered it (unique per
    device, increasing); `op` in OPS; `args` as `validate_command` wants."""

    device: str
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _uint(self.id):
            raise ValueError(f"command id {self.id!r} is not an integer >= 0")
        validate_command(self.op, self.args)


def validate_command(op: str, args: dict[str, Any]) -> None:
    """ValueError saying what is wrong unless (op, args) is a command the firmware runs:
    interval {"seconds": int >= 1}, output {"name": 1-32 of A-Z a-z 0-9 _ -, "on": bool},
    ping {}."""
    if op not in OPS:
        raise ValueError(f"unknown command {op!r}; the commands are {', '.join(OPS)}")
    if not isinstance(args, dict):
        raise ValueError(f"{op}: args must be a table")
    if op == "interval":
        s = args.get("seconds")
        if set(args) != {"seconds"} or not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ValueError('interval wants {seconds = an integer >= 1}')
    elif op == "output":
        name, on = args.get("name"), args.get("on")
        if set(args) != {"name", "on"} or not isinstance(name, str) \
                or not 0 < len(name) <= 32 or not set(name) <= _NAME_CHARS \
                or not isinstance(on, bool):
            raise ValueError('output wants {name = "1 to 32 of A-Z a-z 0-9 _ -", on = a bool}')
    elif args:
        raise ValueError("ping takes no args")


def command_payload(ctr: int, cmd: Command) -> bytes:
    """{"id", "op", "ctr", "args"} in deterministic CBOR."""
    return cbor2.dumps({"ctr": ctr, "id": cmd.id, "op": cmd.op, "args": cmd.args},
                       canonical=True)


def decode_command_payload(device: str, payload: bytes) -> tuple[int, Command]:
    """(ctr, Command) of a command payload; DownlinkError("malformed") otherwise."""
    try:
        d = cbor2.loads(payload)
        if not isinstance(d, dict) or not _uint(d.get("ctr")):
            raise ValueError("not a command")
        return d["ctr"], Command(device, d.get("id", -1), str(d.get("op")), d.get("args", {}))
    except (ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as e:
        raise DownlinkError("malformed", str(e)) from None


# --------------------------------------------------------------------------- confirmations


@dataclass(frozen=True)
class Confirmation:
    """A device's signed confirmation of command `id`: `ok`, and `result` (when ok) or
    `reason` (when not); `cose` is the whole message, as it came, for anchoring."""

    device: str
    id: int
    op: str
    ok: bool
    result: dict[str, Any]
    reason: str
    cose: bytes


_CONFIRM_KEYS = {"v", "dev", "cmd", "op", "ok"}


def decode_confirmation(device: str, msg: bytes,
                        check: Callable[[bytes, bytes], str | None]) -> Confirmation:
    """A confirmation from `device`, checked: the COSE_Sign1 layout of a reading with kid =
    device, then `check(to_be_signed, signature)` (None when the signature holds, else the
    reason; the caller has the device's key), then the payload. DownlinkError otherwise."""
    if len(msg) > MAX_CONFIRMATION:
        raise DownlinkError("too_large", f"{len(msg)} bytes")
    try:
        tag = cbor2.loads(msg)
    except (ValueError, cbor2.CBORDecodeError) as e:
        raise DownlinkError("malformed", f"not CBOR ({e})") from None
    if not isinstance(tag, cbor2.CBORTag) or tag.tag != 18 or not isinstance(tag.value, list) \
            or len(tag.value) != 4:
        raise DownlinkError("malformed", "not a COSE_Sign1")
    protected, unprotected, payload, sig = tag.value
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) \
            or not isinstance(sig, bytes) or unprotected != {}:
        raise DownlinkError("malformed", "not a COSE_Sign1")
    if protected != cbor2.dumps({1: -7, 4: device.encode()}, canonical=True):
        raise DownlinkError("wrong_device", "the protected header is not {1: -7, 4: device id}")
    tbs = b"".join((b"\x84\x6aSignature1", _bstr(protected), b"\x40", _bstr(payload)))
    why = check(tbs, sig)
    if why is not None:
        raise DownlinkError(why, "the device's signature does not hold")
    try:
        p = cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError) as e:
        raise DownlinkError("malformed", f"payload not CBOR ({e})") from None
    if not isinstance(p, dict) or not _CONFIRM_KEYS <= set(p) or p.get("v") != 1 \
            or p["dev"] != device or not _uint(p["cmd"]) or not isinstance(p["op"], str) \
            or not isinstance(p["ok"], bool):
        raise DownlinkError("malformed", "not a confirmation")
    result = p.get("result", {}) if p["ok"] else {}
    reason = "" if p["ok"] else p.get("reason", "")
    if not isinstance(result, dict) or not isinstance(reason, str):
        raise DownlinkError("malformed", "bad result or reason")
    return Confirmation(device, p["cmd"], p["op"], p["ok"], result, reason, bytes(msg))
