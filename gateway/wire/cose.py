"""Strict decoding of a reading message (COSE_Sign1, ES256) into a `Decoded` record.

The wire format is docs/protocol.md:

    18([protected = bstr .cbor {1: -7, 4: kid}, unprotected = {}, payload = bstr .cbor Reading,
        signature = bstr .size 64])

`decode(msg)` either returns a `Decoded` or raises `Rejection(reason, detail)`. It never raises
anything else, whatever the input (a hypothesis test holds it to that). The decoder is written by
hand for exactly this structure instead of calling a general CBOR library, because

* the size limit is checked before anything is parsed, and every declared length (byte strings,
  arrays, maps) is checked against the bytes actually left before anything is sliced or looped
  over, so a header claiming 2**64 bytes costs nothing;
* the nesting depth is bounded (`MAX_DEPTH`) and the parser never recurses deeper than that;
* it needs no re-encoding: the Sig_structure is built from the original protected and payload
  bytes;
* the firmware's exact deterministic layout is read by a fast path (`decode_firmware_layout`,
  no function call per CBOR item, about 4 us against 12 us); anything else takes the general
  parser.

What is accepted beyond the firmware's exact output: non-shortest integer and length heads and
unknown payload keys (ignored, so later firmware versions can add fields; they must still be
well-formed CBOR within the depth limit). What is refused: indefinite lengths, duplicate map keys,
invalid UTF-8, trailing bytes, and every shape rule below.

Rejection reasons raised here (the stable names also used in `ledger status` counters; the
verifier and the pipeline add the others, see docs/gateway.md):

    too_large             message longer than the size limit
    cbor_malformed        not well-formed CBOR (truncated, reserved values, indefinite lengths,
                          bad UTF-8, a declared length larger than what is left)
    too_deep              nesting deeper than MAX_DEPTH
    trailing_bytes        bytes after the COSE_Sign1 item
    not_tag18             the outer item is not CBOR tag 18
    not_array4            tag 18 does not hold an array of exactly four elements
    bad_protected         the protected header is not a bstr holding exactly {1: alg, 4: kid}
    unsupported_alg       alg is not -7 (ES256)
    bad_unprotected       the unprotected header is not an empty map
    bad_signature_length  the signature is not a 64-byte bstr
    bad_payload           the payload is not a bstr holding one map with text keys, no duplicates
    missing_field         a required Reading field (v, dev, seq, prev, data) is missing
    bad_field             a Reading field has the wrong type or range
    unsupported_version   "v" is not 1
    dev_kid_mismatch      "dev" differs from the kid
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.wire.cbor import head

MAX_MESSAGE = 2048
ALG_ES256 = -7  # COSE algorithm id (RFC 9053): ECDSA on P-256 with SHA-256
COSE_SIGN1_TAG = 18
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # group order
HALF_N = P256_N // 2  # the largest low-S value
ZERO_PREV = bytes(32)  # the prev of a device's seq 0
MAX_DEPTH = 8
MAX_SEQ = (1 << 63) - 1  # SQLite integers are signed 64-bit
MAX_DEVICE_ID = 64

DECODE_REASONS: tuple[str, ...] = (
    "too_large",
    "cbor_malformed",
    "too_deep",
    "trailing_bytes",
    "not_tag18",
    "not_array4",
    "bad_protected",
    "unsupported_alg",
    "bad_unprotected",
    "bad_signature_length",
    "bad_payload",
    "missing_field",
    "bad_field",
    "unsupported_version",
    "dev_kid_mismatch",
)

_REQUIRED = ("v", "dev", "seq", "prev", "data")
_SIG1_PREFIX = b"\x84\x6aSignature1"
_EMPTY_BSTR = b"\x40"


class Rejection(Exception):
    """A message refused by a named rule. `reason` is one of the stable reason names."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Decoded:
    """A structurally valid reading message (its signature not yet checked).

    Treat it as read-only. It is not a frozen dataclass because those cost about 4x as much to
    construct (1.1 us against 0.3 us), and one is made per message on the hot path."""

    raw: bytes  # the whole COSE_Sign1 message, as received
    dev: str  # device id (== kid)
    seq: int
    ts: int | None
    prev: bytes  # 32 bytes: SHA-256 of the device's previous message
    data: dict[str, int | float]
    protected: bytes  # protected header bytes (the bstr's content)
    payload: bytes  # payload bytes (the bstr's content)
    signature: bytes  # 64 bytes r || s

    @property
    def to_be_signed(self) -> bytes:
        """The COSE Sig_structure ["Signature1", protected, h'', payload], encoded."""
        return sig_structure(self.protected, self.payload)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole message (what the device's next `prev` must be)."""
        return hashlib.sha256(self.raw).digest()


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Encode the COSE_Sign1 Sig_structure (RFC 9052 §4.4) with empty external_aad."""
    return b"".join(
        (_SIG1_PREFIX, head(2, len(protected)), protected, _EMPTY_BSTR,
         head(2, len(payload)), payload)
    )


# --- the CBOR reader -----------------------------------------------------------------------------


def _head(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one CBOR head at pos. Returns (major type, argument, new pos).

    For major type 7 the argument is the additional-info value (floats are read by the caller).
    Indefinite lengths and reserved additional-info values are malformed here.
    """
    if pos >= end:
        raise Rejection("cbor_malformed", "truncated: item expected")
    ib = buf[pos]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if major == 7:
        # simple values and floats: the caller reads what follows
        return major, info, pos
    if info == 24:
        if pos + 1 > end:
            raise Rejection("cbor_malformed", "truncated head")
        return major, buf[pos], pos + 1
    if info == 25:
        if pos + 2 > end:
            raise Rejection("cbor_malformed", "truncated head")
        return major, (buf[pos] << 8) | buf[pos + 1], pos + 2
    if info == 26:
        if pos + 4 > end:
            raise Rejection("cbor_malformed", "truncated head")
        return major, int.from_bytes(buf[pos:pos + 4], "big"), pos + 4
    if info == 27:
        if pos + 8 > end:
            raise Rejection("cbor_malformed", "truncated head")
        return major, int.from_bytes(buf[pos:pos + 8], "big"), pos + 8
    if info == 31:
        raise Rejection("cbor_malformed", "indefinite lengths are not accepted")
    raise Rejection("cbor_malformed", f"reserved additional information {info}")


def _bytes(buf: bytes, pos: int, end: int, n: int) -> tuple[bytes, int]:
    if n > end - pos:
        raise Rejection("cbor_malformed", f"declared length {n} exceeds the {end - pos} bytes left")
    return buf[pos:pos + n], pos + n


def _simple(buf: bytes, pos: int, end: int, info: int) -> tuple[Any, int]:
    """Major type 7 after its initial byte: false/true/null/undefined or a float."""
    if info == 20:
        return False, pos
    if info == 21:
        return True, pos
    if info == 22 or info == 23:
        return None, pos
    if info == 25:
        if pos + 2 > end:
            raise Rejection("cbor_malformed", "truncated float")
        return struct.unpack_from(">e", buf, pos)[0], pos + 2
    if info == 26:
        if pos + 4 > end:
            raise Rejection("cbor_malformed", "truncated float")
        return struct.unpack_from(">f", buf, pos)[0], pos + 4
    if info == 27:
        if pos + 8 > end:
            raise Rejection("cbor_malformed", "truncated float")
        return struct.unpack_from(">d", buf, pos)[0], pos + 8
    if info < 20:
        return ("simple", info), pos
    if info == 24:
        if pos + 1 > end:
            raise Rejection("cbor_malformed", "truncated simple value")
        if buf[pos] < 32:
            raise Rejection("cbor_malformed", "simple value in two-byte form below 32")
        return ("simple", buf[pos]), pos + 1
    if info == 31:
        raise Rejection("cbor_malformed", "unexpected break")
    raise Rejection("cbor_malformed", f"reserved additional information {info}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejection("cbor_malformed", "text string is not valid UTF-8") from None


def _skip(buf: bytes, pos: int, end: int, depth: int) -> int:
    """Check one well-formed item at pos (within the depth limit) and return the pos after it."""
    if depth > MAX_DEPTH:
        raise Rejection("too_deep", f"nesting deeper than {MAX_DEPTH}")
    major, arg, pos = _head(buf, pos, end)
    if major <= 1:
        return pos
    if major == 2:
        return _bytes(buf, pos, end, arg)[1]
    if major == 3:
        raw, pos = _bytes(buf, pos, end, arg)
        _text(raw)
        return pos
    if major == 4:
        if arg > end - pos:
            raise Rejection("cbor_malformed", f"array of {arg} items in {end - pos} bytes")
        for _ in range(arg):
            pos = _skip(buf, pos, end, depth + 1)
        return pos
    if major == 5:
        if 2 * arg > end - pos:
            raise Rejection("cbor_malformed", f"map of {arg} pairs in {end - pos} bytes")
        for _ in range(2 * arg):
            pos = _skip(buf, pos, end, depth + 1)
        return pos
    if major == 6:
        return _skip(buf, pos, end, depth + 1)
    return _simple(buf, pos, end, arg)[1]


def _scalar(buf: bytes, pos: int, end: int) -> tuple[Any, int]:
    """Read one item that is expected to be a scalar. Containers and tags are skipped
    (after checking them) and returned as the marker `_COMPOUND`."""
    start = pos
    major, arg, pos = _head(buf, pos, end)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2:
        return _bytes(buf, pos, end, arg)
    if major == 3:
        raw, pos = _bytes(buf, pos, end, arg)
        return _text(raw), pos
    if major == 7:
        return _simple(buf, pos, end, arg)
    return _COMPOUND, _skip(buf, start, end, 2)


class _Compound:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<array, map or tag>"


_COMPOUND = _Compound()


# --- the message ---------------------------------------------------------------------------------


def _protected(raw: bytes) -> str:
    """Decode the protected header {1: -7, 4: kid}; return the kid as text."""
    end = len(raw)
    try:
        major, n, pos = _head(raw, 0, end)
    except Rejection as r:
        raise Rejection("bad_protected", f"protected header: {r.detail}") from None
    if major != 5:
        raise Rejection("bad_protected", "protected header is not a map")
    if n > end:
        raise Rejection("bad_protected", "protected header map is truncated")
    alg: Any = None
    kid: Any = None
    seen: set[Any] = set()
    for _ in range(n):
        try:
            label, pos = _scalar(raw, pos, end)
            value, pos = _scalar(raw, pos, end)
        except Rejection as r:
            raise Rejection("bad_protected", f"protected header: {r.detail}") from None
        if type(label) is not int or label in seen:
            raise Rejection("bad_protected", f"unexpected or repeated label {label!r}")
        seen.add(label)
        if label == 1:
            alg = value
        elif label == 4:
            kid = value
        else:
            raise Rejection("bad_protected", f"label {label} is not allowed (only 1 and 4)")
    if pos != end:
        raise Rejection("bad_protected", "bytes after the protected header map")
    if alg is None:
        raise Rejection("bad_protected", "alg (label 1) is missing")
    if alg != ALG_ES256 or type(alg) is not int:
        raise Rejection("unsupported_alg", f"alg {alg!r} is not ES256 (-7)")
    if type(kid) is not bytes:
        raise Rejection("bad_protected", "kid (label 4) is missing or not a byte string")
    try:
        dev = kid.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejection("bad_protected", "kid is not UTF-8") from None
    if not 0 < len(kid) <= MAX_DEVICE_ID:
        raise Rejection("bad_protected", f"kid must be 1..{MAX_DEVICE_ID} bytes")
    return dev


def _payload(raw: bytes) -> dict[str, Any]:
    """Decode the Reading map: known keys with values, unknown keys checked and dropped."""
    end = len(raw)
    try:
        major, n, pos = _head(raw, 0, end)
    except Rejection as r:
        raise Rejection(r.reason, f"payload: {r.detail}") from None
    if major != 5:
        raise Rejection("bad_payload", "payload is not a CBOR map")
    if 2 * n > end - pos:
        raise Rejection("cbor_malformed", f"payload map of {n} pairs in {end - pos} bytes")
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for _ in range(n):
        key, pos = _scalar(raw, pos, end)
        if type(key) is not str:
            raise Rejection("bad_payload", f"payload key {key!r} is not a text string")
        if key in seen:
            raise Rejection("bad_payload", f"payload key {key!r} appears twice")
        seen.add(key)
        if key == "data":
            out[key], pos = _data(raw, pos, end)
        elif key in ("v", "dev", "seq", "ts", "prev"):
            out[key], pos = _scalar(raw, pos, end)
        else:
            pos = _skip(raw, pos, end, 2)
    if pos != end:
        raise Rejection("bad_payload", "bytes after the payload map")
    return out


def _data(buf: bytes, pos: int, end: int) -> tuple[dict[str, int | float], int]:
    major, n, pos = _head(buf, pos, end)
    if major != 5:
        raise Rejection("bad_field", "data is not a map")
    if 2 * n > end - pos:
        raise Rejection("cbor_malformed", f"data map of {n} pairs in {end - pos} bytes")
    out: dict[str, int | float] = {}
    for _ in range(n):
        key, pos = _scalar(buf, pos, end)
        value, pos = _scalar(buf, pos, end)
        if type(key) is not str:
            raise Rejection("bad_field", f"data key {key!r} is not a text string")
        if key in out:
            raise Rejection("bad_field", f"data key {key!r} appears twice")
        if type(value) is not int and type(value) is not float:
            raise Rejection("bad_field", f"data[{key!r}] is not a number")
        out[key] = value
    return out, pos


def decode(msg: bytes, max_size: int = MAX_MESSAGE) -> Decoded:
    """Decode one reading message strictly. Raises `Rejection` (only) when it breaks a rule."""
    try:
        return decode_unguarded(msg, max_size)
    except Rejection:
        raise
    except Exception as e:  # pragma: no cover - defensive: the parser raises only Rejection
        raise Rejection("cbor_malformed", f"unexpected decoder error {type(e).__name__}") from None


def decode_unguarded(msg: bytes, max_size: int = MAX_MESSAGE) -> Decoded:
    """`decode` without its guard: raises `Rejection` when the message breaks a rule, and any
    other exception is a bug in the parser, raised as it is (the fuzz targets look for those)."""
    if type(msg) is not bytes:
        msg = bytes(msg)
    if len(msg) > max_size:
        raise Rejection("too_large", f"{len(msg)} bytes > limit {max_size}")
    try:
        fast = decode_firmware_layout(msg)
    except (IndexError, ValueError, struct.error):
        fast = None
    return fast if fast is not None else decode_general(msg)


_UINT_HEAD = {0x18: 1, 0x19: 2, 0x1A: 4, 0x1B: 8}
_FLOAT_FMT = {0xF9: (">e", 2), 0xFA: (">f", 4), 0xFB: (">d", 8)}


def decode_firmware_layout(msg: bytes) -> Decoded | None:
    """The firmware's exact deterministic layout, read in one pass with no calls per item.

    Returns None for anything else (including every malformed message), and the general
    parser then decides; so this path never rejects, and on what it accepts it must agree with
    `decode_general` exactly (tests/unit/test_cose.py checks both on the same inputs).
    Layout: d2 84 | bstr(a2 01 26 04 bstr(kid)) | a0 | bstr(payload) | 58 40 sig, with the
    payload map's keys in deterministic order: v, ts (optional), dev, seq, data, prev.
    """
    end = len(msg)
    if msg[0] != 0xD2 or msg[1] != 0x84:
        return None
    b = msg[2]
    if 0x40 <= b <= 0x57:
        plen, pos = b - 0x40, 3
    elif b == 0x58:
        plen, pos = msg[3], 4
    else:
        return None
    protected = msg[pos:pos + plen]
    pos += plen
    if protected[:4] != b"\xa2\x01\x26\x04":
        return None
    b = protected[4]
    if 0x41 <= b <= 0x57:
        kid = protected[5:]
        if len(kid) != b - 0x40:
            return None
    elif b == 0x58:
        kid = protected[6:]
        if len(kid) != protected[5] or not 24 <= len(kid) <= MAX_DEVICE_ID:
            return None
    else:
        return None
    if msg[pos] != 0xA0:
        return None
    b = msg[pos + 1]
    if b == 0x58:
        n, pos = msg[pos + 2], pos + 3
    elif b == 0x59:
        n, pos = (msg[pos + 2] << 8) | msg[pos + 3], pos + 4
    else:
        return None
    payload = msg[pos:pos + n]
    pos += n
    if end - pos != 66 or msg[pos] != 0x58 or msg[pos + 1] != 0x40 or len(payload) != n:
        return None
    signature = msg[pos + 2:]
    # the Reading: {"v": 1, ["ts": uint,] "dev": tstr, "seq": uint, "data": map, "prev": 32}
    p = payload
    count = p[0]
    if p[1:4] != b"\x61\x76\x01":
        return None
    q = 4
    ts: int | None = None
    if count == 0xA6 and p[4:7] == b"\x62ts":
        b = p[7]
        if b < 24:
            ts, q = b, 8
        else:
            w = _UINT_HEAD.get(b)
            if w is None:
                return None
            ts, q = int.from_bytes(p[8:8 + w], "big"), 8 + w
    elif count != 0xA5:
        return None
    if p[q:q + 4] != b"\x63dev":
        return None
    b = p[q + 4]
    if 0x60 <= b <= 0x77:
        dlen, q = b - 0x60, q + 5
    elif b == 0x78:
        dlen, q = p[q + 5], q + 6
    else:
        return None
    if p[q:q + dlen] != kid:
        return None
    q += dlen
    if p[q:q + 4] != b"\x63seq":
        return None
    b = p[q + 4]
    if b < 24:
        seq, q = b, q + 5
    else:
        w = _UINT_HEAD.get(b)
        if w is None:
            return None
        seq, q = int.from_bytes(p[q + 5:q + 5 + w], "big"), q + 5 + w
        if seq > MAX_SEQ:
            return None
    if p[q:q + 5] != b"\x64data":
        return None
    b = p[q + 5]
    if not 0xA0 <= b <= 0xB7:
        return None
    q += 6
    data: dict[str, int | float] = {}
    for _ in range(b - 0xA0):
        b = p[q]
        if not 0x60 <= b <= 0x77:
            return None
        key = p[q + 1:q + 1 + b - 0x60].decode("utf-8")  # ValueError: not UTF-8 -> general
        q += 1 + b - 0x60
        b = p[q]
        if b < 0x18:
            value: int | float = b
            q += 1
        elif 0x20 <= b < 0x38:
            value = 0x1F - b
            q += 1
        elif b in _FLOAT_FMT:
            fmt, w = _FLOAT_FMT[b]
            value = struct.unpack_from(fmt, p, q + 1)[0]
            q += 1 + w
        else:
            w = _UINT_HEAD.get(b & 0x1F if b < 0x40 else -1, 0)
            if not w:
                return None
            value = int.from_bytes(p[q + 1:q + 1 + w], "big")
            if b >= 0x20:
                value = -1 - value
            q += 1 + w
        if key in data:
            return None
        data[key] = value
    if p[q:q + 7] != b"\x64prev\x58\x20" or q + 39 != len(p):
        return None
    prev = p[q + 7:]
    dev = kid.decode("utf-8")
    return Decoded(msg, dev, seq, ts, prev, data, protected, payload, signature)


# --- the verifier's fast path ----------------------------------------------------------------
# The workers need five things per message: dev, seq, prev, the Sig_structure and the signature.
# `fields` gets them for the firmware's exact output with one compiled pattern (matched in C) and
# a few slices, without making a `Decoded` or reading the sensor values (about 1.5 us against 3.6
# for `decode`). It returns None for anything else, and the caller then uses `decode`, which
# decides; on what `fields` accepts it agrees with `decode` exactly (tests/unit/test_cose.py).
# Beyond `decode_firmware_layout`'s layout it asks for shortest length heads, ASCII sensor names
# below 24 bytes and sensor names in deterministic (strictly increasing) order, so that the
# Sig_structure can be sliced from the message and no duplicate name can hide. There is one
# pattern per kid length (read from the kid's head before matching, compiled on first use), so
# that every part of the pattern is fixed or self-delimiting and matching never backtracks
# more than a byte or two.
_RX_UINT = rb"(?:[\x00-\x17]|\x18.|\x19..|\x1a.{4}|\x1b.{8})"
_RX_NUMBER = (rb"(?:[\x00-\x17\x20-\x37]|[\x18\x38].|[\x19\x39\xf9]..|[\x1a\x3a\xfa].{4}"
              rb"|[\x1b\x3b\xfb].{8})")
_RX_KEY = b"|".join(b"\\x%02x[\\x00-\\x7f]{%d}" % (0x60 + n, n) for n in range(1, 24))
_RX_ENTRY = rb"(?:" + _RX_KEY + rb")" + _RX_NUMBER
_RX_DATA = b"|".join(b"\\x%02x(?:%s){%d}" % (0xA0 + n, _RX_ENTRY, n) for n in range(24))
_FIELDS_RX = (
    rb"\xd2\x84(?P<prot>(?P<ph>[\x45-\x57]|\x58[\x18-\xff])"
    rb"\xa2\x01\x26\x04(?:[\x41-\x57]|\x58[\x18-\x40])(?P<kid>.{%d}))"
    rb"\xa0(?P<pay>(?P<plh>\x58[\x18-\xff]|\x59[\x01-\xff].)"
    rb"(?P<pc>[\xa5\xa6])\x61v\x01(?:\x62ts(?P<ts>%s))?"
    rb"\x63dev(?P<dh>[\x61-\x77]|\x78[\x18-\x40])(?P=kid)\x63seq(?P<seq>%s)"
    rb"\x64data(?P<data>%s)\x64prev\x58\x20(?P<prev>.{32}))"
    rb"\x58\x40(?P<sig>.{64})\Z")
_fields_rx: dict[int, re.Pattern[bytes]] = {}  # kid length -> its pattern


def _pattern(kid_len: int) -> re.Pattern[bytes]:
    rx = _fields_rx.get(kid_len)
    if rx is None:
        rx = _fields_rx[kid_len] = re.compile(
            _FIELDS_RX % (kid_len, _RX_UINT, _RX_UINT, _RX_DATA), re.S)
    return rx


_KEYS_RX = re.compile(rb"((?:" + _RX_KEY + rb"))" + _RX_NUMBER, re.S)


def _fast_match(msg: bytes) -> re.Match[bytes] | None:
    """The firmware's exact layout, every length checked, or None."""
    if len(msg) < 16:
        return None
    i = 8 if msg[2] == 0x58 else 7  # the kid's head, if this is the layout
    b = msg[i]
    n = b - 0x40 if 0x41 <= b <= 0x57 else msg[i + 1] if b == 0x58 else 0
    if not 0 < n <= MAX_DEVICE_ID:
        return None
    m = _pattern(n).match(msg)
    if m is None:
        return None
    ph, plh, pc, dh, data = m.group("ph", "plh", "pc", "dh", "data")
    p0, p1 = m.span("prot")
    q0, q1 = m.span("pay")
    if ((ph[0] - 0x40 if len(ph) == 1 else ph[1]) != p1 - p0 - len(ph)  # (kid's: read above)
            or (dh[0] - 0x60 if len(dh) == 1 else dh[1]) != n
            or (plh[1] if len(plh) == 2 else (plh[1] << 8) | plh[2]) != q1 - q0 - len(plh)
            or (pc[0] == 0xA6) != (msg[q0 + len(plh) + 4] == 0x62)):  # 6 fields iff "ts"
        return None
    if len(data) > 1:
        keys = _KEYS_RX.findall(data, 1)
        for a, b in zip(keys, keys[1:], strict=False):  # deterministic order: no name twice
            if a >= b:
                return None
    seq_b = m.group("seq")
    if len(seq_b) > 1 and int.from_bytes(seq_b[1:], "big") > MAX_SEQ:
        return None
    try:
        m.group("kid").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return m


def _uint(item: bytes) -> int:
    """The value of a matched CBOR unsigned integer (its head, then any argument bytes)."""
    return item[0] if len(item) == 1 else int.from_bytes(item[1:], "big")


def _fields_of(m: re.Match[bytes]) -> tuple[str, int, bytes, bytes, bytes]:
    msg = m.string
    seq_b = m.group("seq")
    p0, p1 = m.span("prot")
    q0, q1 = m.span("pay")
    return (m.group("kid").decode("utf-8"),
            _uint(seq_b), m.group("prev"),
            b"".join((_SIG1_PREFIX, msg[p0:p1], b"\x40", msg[q0:q1])), m.group("sig"))


def fields(msg: bytes) -> tuple[str, int, bytes, bytes, bytes] | None:
    """(dev, seq, prev, Sig_structure, signature) of a message in the firmware's exact layout,
    or None (then call `decode`). See the comment above."""
    m = _fast_match(msg)
    return None if m is None else _fields_of(m)


def identity(msg: bytes) -> tuple[str, int] | None:
    """(dev, seq) of a message in the firmware's exact layout, or None: what `fields` reads
    of it, without the Sig_structure. Unverified: a hint for finding a stored copy."""
    m = _fast_match(msg)
    if m is None:
        return None
    seq_b = m.group("seq")
    try:
        dev = m.group("kid").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return dev, _uint(seq_b)


def fields_and_values(msg: bytes) -> tuple[str, int, bytes, bytes, bytes, int | None,
                                           dict[str, int | float]] | None:
    """`fields` and then (ts, data), as `decode` gives them, or None. The data map is the
    matched bytes (text names, numbers: nothing else matches) read by cbor2's C decoder."""
    m = _fast_match(msg)
    if m is None:
        return None
    ts_b = m.group("ts")
    ts = None if ts_b is None else _uint(ts_b)
    return (*_fields_of(m), ts, cbor2.loads(m.group("data")))


def decode_general(msg: bytes) -> Decoded:
    """Any layout the format allows (after the size check); raises Rejection."""
    end = len(msg)
    major, arg, pos = _head(msg, 0, end)
    if major != 6 or arg != 18:
        raise Rejection("not_tag18", "the message must start with CBOR tag 18 (COSE_Sign1)")
    major, arg, pos = _head(msg, pos, end)
    if major != 4 or arg != 4:
        raise Rejection("not_array4", "tag 18 must hold an array of exactly four elements")
    # protected
    major, arg, pos = _head(msg, pos, end)
    if major != 2:
        raise Rejection("bad_protected", "protected header is not a byte string")
    protected, pos = _bytes(msg, pos, end, arg)
    # unprotected
    major, arg, p2 = _head(msg, pos, end)
    if major != 5:
        raise Rejection("bad_unprotected", "unprotected header is not a map")
    if arg != 0:
        _skip(msg, pos, end, 2)
        raise Rejection("bad_unprotected", "unprotected header must be empty")
    pos = p2
    # payload
    major, arg, pos = _head(msg, pos, end)
    if major != 2:
        if major == 7 and arg == 22:
            raise Rejection("bad_payload", "detached payload (nil) is not accepted")
        raise Rejection("bad_payload", "payload is not a byte string")
    payload, pos = _bytes(msg, pos, end, arg)
    # signature
    major, arg, pos = _head(msg, pos, end)
    if major != 2:
        raise Rejection("bad_signature_length", "signature is not a byte string")
    signature, pos = _bytes(msg, pos, end, arg)
    if pos != end:
        raise Rejection("trailing_bytes", f"{end - pos} bytes after the COSE_Sign1 item")
    if len(signature) != 64:
        raise Rejection("bad_signature_length", f"signature is {len(signature)} bytes, not 64")

    kid = _protected(protected)
    fields = _payload(payload)
    for name in _REQUIRED:
        if name not in fields:
            raise Rejection("missing_field", f"payload has no {name!r}")
    v = fields["v"]
    if type(v) is not int:
        raise Rejection("bad_field", "v is not an integer")
    if v != 1:
        raise Rejection("unsupported_version", f"v = {v}, this gateway reads version 1")
    dev = fields["dev"]
    if type(dev) is not str:
        raise Rejection("bad_field", "dev is not a text string")
    if dev != kid:
        raise Rejection("dev_kid_mismatch", f"dev {dev[:80]!r} differs from kid {kid!r}")
    seq = fields["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise Rejection("bad_field", "seq is not an unsigned integer below 2**63")
    ts = fields.get("ts")
    if "ts" in fields and type(ts) is not int:
        raise Rejection("bad_field", "ts is not an integer")
    prev = fields["prev"]
    if type(prev) is not bytes or len(prev) != 32:
        raise Rejection("bad_field", "prev is not a 32-byte string")
    return Decoded(msg, dev, seq, ts, prev, fields["data"], protected, payload, signature)
