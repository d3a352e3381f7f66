"""MQTT 3.1.1 and 5.0 packets: building them and splitting a byte stream into them.

The gateway's own codec, shared by the service (`gateway/service/`) and the load engine
(`gateway/sim/loadgen.py`) through `gateway/mqtt/client.py`. Only what iot-anchor uses:

- sent: CONNECT (clean or persistent session, user name and password, MQTT 5's session expiry
  and receive maximum), PUBLISH at QoS 0 and 1, PUBACK, SUBSCRIBE, PINGREQ, DISCONNECT;
- received: CONNACK, PUBLISH (QoS 0 and 1), PUBACK, SUBACK, PINGRESP, DISCONNECT (MQTT 5).

References: MQTT 3.1.1 (OASIS, 2014) sections 2 and 3; MQTT 5.0 (OASIS, 2019) sections 2 and 3.
MQTT 5 properties are skipped on receipt except the few `parse_connack` reports.

Everything here is pure: bytes in, bytes or values out. Malformed input raises
`MalformedPacket`, whose message names the packet and the field.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

V311 = 4  # protocol level of MQTT 3.1.1
V5 = 5  # protocol level of MQTT 5.0

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = 5, 6, 7, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 10, 11, 12, 13, 14, 15

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # MQTT 5 too: reason 0x00 "normal disconnection", no properties
MAX_REMAINING = 268_435_455  # the largest remaining length four bytes can say

# MQTT 5 property identifiers used here (MQTT 5.0 section 2.2.2.2)
PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAXIMUM_QOS = 0x24
PROP_SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

# Value types of every MQTT 5 property, to skip the ones not read: 1 byte, 2, 4, varint,
# UTF-8 string or binary data (2-byte length), string pair.
_PROP_TYPES: dict[int, str] = {
    0x01: "b", 0x02: "4", 0x03: "s", 0x08: "s", 0x09: "s", 0x0B: "v", 0x11: "4", 0x12: "s",
    0x13: "2", 0x15: "s", 0x16: "s", 0x17: "b", 0x18: "4", 0x19: "b", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "2", 0x22: "2", 0x23: "2", 0x24: "b", 0x25: "b", 0x26: "p", 0x27: "4",
    0x28: "b", 0x29: "b", 0x2A: "b",
}

# CONNACK return codes of MQTT 3.1.1 and reason codes of MQTT 5, as their specs name them.
CONNACK_REASONS: dict[int, str] = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8C: "bad authentication method", 0x90: "topic name invalid", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported",
    0x9B: "QoS not supported", 0x9C: "use another server", 0x9D: "server moved",
    0x9F: "connection rate exceeded",
}


class MalformedPacket(ValueError):
    """Bytes that are not the MQTT packet they claim to be."""


# --------------------------------------------------------------------------- encoding


def varint(n: int) -> bytes:
    """The variable byte integer of n (remaining lengths, MQTT 5 property lengths).
    Requires 0 <= n <= MAX_REMAINING."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"{n} does not fit in an MQTT variable byte integer")
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s: str | bytes) -> bytes:
    """A UTF-8 string or binary data field: 2-byte big-endian length, then the bytes."""
    b = s.encode() if isinstance(s, str) else bytes(s)
    if len(b) > 0xFFFF:
        raise ValueError(f"an MQTT string holds at most 65,535 bytes, not {len(b)}")
    return len(b).to_bytes(2, "big") + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def _properties(props: Iterable[tuple[int, int]]) -> bytes:
    """MQTT 5 properties of integer type (the only ones sent here), with their length."""
    out = bytearray()
    for ident, value in props:
        kind = _PROP_TYPES[ident]
        out.append(ident)
        if kind == "b":
            out.append(value)
        elif kind == "2":
            out += value.to_bytes(2, "big")
        elif kind == "4":
            out += value.to_bytes(4, "big")
        else:
            raise ValueError(f"property 0x{ident:02x} is not an integer property")
    return varint(len(out)) + bytes(out)


@dataclass(frozen=True)
class ConnectOptions:
    """What a CONNECT says. `clean=False` asks for a persistent session (MQTT 5: clean start
    off and a session expiry interval of `session_expiry` seconds, by default the maximum)."""

    client_id: str
    keepalive: int = 30
    clean: bool = True
    username: str | None = None
    password: str | None = None
    version: int = V311
    session_expiry: int = 0xFFFFFFFF
    receive_maximum: int = 65535
    will: tuple[str, bytes, int, bool] | None = None  # topic, payload, QoS, retain


def connect_packet(o: ConnectOptions) -> bytes:
    if o.version not in (V311, V5):
        raise ValueError(f"MQTT protocol level {o.version} is not 4 (3.1.1) or 5 (5.0)")
    if not 0 <= o.keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {o.keepalive} is not 0..65535 s")
    flags = 0x02 if o.clean else 0
    if o.will is not None:
        flags |= 0x04 | (o.will[2] << 3) | (0x20 if o.will[3] else 0)
    if o.username is not None:
        flags |= 0x80
    if o.password is not None:
        flags |= 0x40
    var = string("MQTT") + bytes((o.version, flags)) + o.keepalive.to_bytes(2, "big")
    if o.version == V5:
        props = [(PROP_RECEIVE_MAXIMUM, o.receive_maximum)]
        if not o.clean:
            props.insert(0, (PROP_SESSION_EXPIRY, o.session_expiry))
        var += _properties(props)
    payload = string(o.client_id)
    if o.will is not None:
        if o.version == V5:
            payload += b"\x00"  # no will properties
        payload += string(o.will[0]) + string(o.will[1])
    if o.username is not None:
        payload += string(o.username)
    if o.password is not None:
        payload += string(o.password)
    return _packet(CONNECT << 4, var + payload)


def publish_packet(topic: bytes, payload: bytes, pid: int, *, qos: int = 1,
                   retain: bool = False, dup: bool = False, version: int = V311) -> bytes:
    """A PUBLISH; `pid` is ignored at QoS 0. Requires 1 <= pid <= 65535 at QoS 1."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    props = b"\x00" if version == V5 else b""
    if qos:
        body_len = 2 + len(topic) + 2 + len(props) + len(payload)
        return b"".join((bytes((first,)), varint(body_len), len(topic).to_bytes(2, "big"),
                         topic, pid.to_bytes(2, "big"), props, payload))
    body_len = 2 + len(topic) + len(props) + len(payload)
    return b"".join((bytes((first,)), varint(body_len), len(topic).to_bytes(2, "big"), topic,
                     props, payload))


def puback_packets(pids: Sequence[int]) -> bytes:
    """PUBACKs for `pids`, in order (success: MQTT 5 leaves out a reason of 0)."""
    return struct.pack(f"!{len(pids)}I", *(0x40020000 | pid for pid in pids))


def subscribe_packet(pid: int, filters: Sequence[tuple[str, int]], version: int = V311) -> bytes:
    """A SUBSCRIBE of (topic filter, maximum QoS) pairs."""
    body = pid.to_bytes(2, "big") + (b"\x00" if version == V5 else b"")
    for topic, qos in filters:
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos} is not 0, 1 or 2")
        body += string(topic) + bytes((qos,))
    return _packet(0x82, body)


# --------------------------------------------------------------------------- decoding


def read_varint(buf: bytes | bytearray | memoryview, pos: int, end: int
                ) -> tuple[int, int] | None:
    """(value, position after it) of the variable byte integer at buf[pos], or None when the
    bytes up to `end` hold only part of it. Raises MalformedPacket past four bytes."""
    value = 0
    shift = 0
    for i in range(pos, min(end, pos + 4)):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacket("a remaining length or property length runs past four bytes")
    return None


def split_packets(buf: bytes | bytearray, pos: int = 0
                  ) -> tuple[list[tuple[int, int, int]], int]:
    """The whole packets in buf[pos:] as (first byte, body start, body end), and the position
    where the first incomplete packet starts (len(buf) when none is left over)."""
    out = []
    end = len(buf)
    while end - pos >= 2:
        got = read_varint(buf, pos + 1, end)
        if got is None:
            break
        length, start = got
        stop = start + length
        if stop > end:
            break
        out.append((buf[pos], start, stop))
        pos = stop
    return out, pos


def _skip_properties(body: bytes | memoryview, pos: int, what: str) -> int:
    got = read_varint(body, pos, len(body))
    if got is None or got[1] + got[0] > len(body):
        raise MalformedPacket(f"{what}: the properties run past the packet")
    return got[1] + got[0]


@dataclass(frozen=True)
class Connack:
    session_present: bool
    code: int  # 0: accepted
    properties: dict[int, int | str] = field(default_factory=dict)  # MQTT 5, the ones read

    @property
    def reason(self) -> str:
        text = CONNACK_REASONS.get(self.code, f"code 0x{self.code:02x}")
        extra = self.properties.get(PROP_REASON_STRING)
        return f"{text} ({extra})" if extra else text


def parse_properties(body: bytes | memoryview, pos: int, what: str
                     ) -> tuple[dict[int, int | str], int]:
    """MQTT 5 properties at body[pos]: integers and strings by identifier (string pairs and
    binary data skipped), and the position after them."""
    got = read_varint(body, pos, len(body))
    if got is None:
        raise MalformedPacket(f"{what}: the property length is cut short")
    length, p = got
    end = p + length
    if end > len(body):
        raise MalformedPacket(f"{what}: the properties run past the packet")
    props: dict[int, int | str] = {}
    while p < end:
        ident = body[p]
        kind = _PROP_TYPES.get(ident)
        p += 1
        if kind is None:
            raise MalformedPacket(f"{what}: unknown property 0x{ident:02x}")
        if kind == "b":
            value: int | str = body[p]
            p += 1
        elif kind == "2":
            value = int.from_bytes(body[p:p + 2], "big")
            p += 2
        elif kind == "4":
            value = int.from_bytes(body[p:p + 4], "big")
            p += 4
        elif kind == "v":
            got = read_varint(body, p, end)
            if got is None:
                raise MalformedPacket(f"{what}: property 0x{ident:02x} is cut short")
            value, p = got
        else:
            count = 2 if kind == "p" else 1
            raw = b""
            for _ in range(count):
                n = int.from_bytes(body[p:p + 2], "big")
                raw = bytes(body[p + 2:p + 2 + n])
                p += 2 + n
            value = raw.decode("utf-8", "replace")
        if p > end:
            raise MalformedPacket(f"{what}: property 0x{ident:02x} runs past the properties")
        if kind != "p":
            props[ident] = value
    return props, end


def parse_connack(body: bytes | memoryview, version: int) -> Connack:
    """A CONNACK's body. A 3.1.1-only broker answers an MQTT 5 CONNECT with a 2-byte 3.1.1
    CONNACK refusing the protocol version (code 1): that is parsed, not refused."""
    if len(body) < 2:
        raise MalformedPacket(f"CONNACK: {len(body)} bytes, at least 2 expected")
    if body[0] & 0xFE:
        raise MalformedPacket(f"CONNACK: reserved flag bits 0x{body[0]:02x} set")
    props: dict[int, int | str] = {}
    if version == V5 and len(body) > 2:
        props, _ = parse_properties(body, 2, "CONNACK")
    elif len(body) != 2:
        raise MalformedPacket(f"CONNACK: {len(body)} bytes, 2 expected")
    return Connack(bool(body[0] & 1), body[1], props)


def parse_suback(body: bytes | memoryview, version: int) -> tuple[int, list[int]]:
    """(packet id, granted QoS or failure code per filter); codes >= 0x80 are refusals."""
    if len(body) < 3:
        raise MalformedPacket(f"SUBACK: {len(body)} bytes, at least 3 expected")
    pos = 2 if version != V5 else _skip_properties(body, 2, "SUBACK")
    codes = list(body[pos:])
    if not codes:
        raise MalformedPacket("SUBACK: no return code")
    return int.from_bytes(body[:2], "big"), codes


def parse_puback(body: bytes | memoryview) -> tuple[int, int]:
    """(packet id, reason code: 0 unless MQTT 5 says otherwise)."""
    if len(body) < 2:
        raise MalformedPacket(f"PUBACK: {len(body)} bytes, at least 2 expected")
    return int.from_bytes(body[:2], "big"), body[2] if len(body) > 2 else 0


@dataclass(frozen=True, slots=True)
class Publish:
    topic: bytes
    payload: bytes
    pid: int  # 0 at QoS 0
    qos: int
    retain: bool
    dup: bool


def parse_publish(first: int, body: bytes | memoryview, version: int) -> Publish:
    """A PUBLISH's fixed-header flags and body."""
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH: QoS 3 is reserved")
    if len(body) < 2:
        raise MalformedPacket("PUBLISH: no topic length")
    tl = int.from_bytes(body[:2], "big")
    pos = 2 + tl
    if pos + (2 if qos else 0) > len(body):
        raise MalformedPacket(f"PUBLISH: topic length {tl} runs past the packet")
    topic = bytes(body[2:pos])
    pid = 0
    if qos:
        pid = int.from_bytes(body[pos:pos + 2], "big")
        if pid == 0:
            raise MalformedPacket("PUBLISH: packet id 0 at QoS > 0")
        pos += 2
    if version == V5:
        pos = _skip_properties(body, pos, "PUBLISH")
    return Publish(topic, bytes(body[pos:]), pid, qos, bool(first & 1), bool(first & 8))


def parse_disconnect(body: bytes | memoryview) -> tuple[int, str]:
    """An MQTT 5 DISCONNECT from the server: (reason code, its reason string or '')."""
    if not body:
        return 0, ""
    code = body[0]
    reason = ""
    if len(body) > 1:
        props, _ = parse_properties(body, 1, "DISCONNECT")
        reason = str(props.get(PROP_REASON_STRING, ""))
    return code, reason
