"""The service's read-ahead socket wrapper (gateway.service._ReadAhead) on a real socketpair:
paho's read pattern (1 byte, length bytes, body) must see exactly the bytes sent, in order,
across buffer boundaries, with BlockingIOError when nothing is left and b"" at EOF. And the
lean PUBLISH handler (gateway.service._lean_publish) against paho's own."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.service import _lean_publish, _read_ahead, _ReadAhead


def _packets(n: int, rng: random.Random) -> list[bytes]:
    out = []
    for i in range(n):
        body = bytes(rng.randrange(256) for _ in range(rng.choice((3, 150, 200, 300))))
        length = len(body)
        head = bytearray([0x32])
        while True:  # MQTT remaining length
            b, length = length % 128, length // 128
            head.append(b | (0x80 if length else 0))
            if not length:
                break
        out.append(bytes(head) + body + i.to_bytes(2, "big"))
    return out


def _read_packet(s: _ReadAhead) -> bytes:
    """Read one packet the way paho does: type byte, length byte by byte, then the body
    (possibly in several partial reads)."""
    head = s.recv(1)
    length, mult, raw = 0, 1, bytearray(head)
    while True:
        b = s.recv(1)
        raw += b
        length += (b[0] & 0x7F) * mult
        mult *= 128
        if not b[0] & 0x80:
            break
    body = b""
    want = length + 2
    while len(body) < want:
        body += s.recv(want - len(body))
    return bytes(raw) + body


def test_paho_read_pattern_sees_every_byte_in_order() -> None:
    rng = random.Random(4)
    pkts = _packets(2000, rng)  # ~400 KB: many 64 KiB reads, packets cut at the boundaries
    a, b = socket.socketpair()
    try:
        a.sendall(b"".join(pkts[:10]))
        s = _ReadAhead(b)
        got = [_read_packet(s) for _ in range(10)]
        assert got == pkts[:10]
        assert s.pending() == 0
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
        b.setblocking(True)
        sender = __import__("threading").Thread(target=a.sendall, args=(b"".join(pkts[10:]),))
        sender.start()
        got = [_read_packet(s) for _ in range(len(pkts) - 10)]
        sender.join()
        assert got == pkts[10:]
        a.close()
        assert s.recv(1) == b""  # EOF reaches paho as before
    finally:
        a.close()
        b.close()


def test_pending_counts_buffered_bytes_and_delegates() -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(b"0123456789")
        s = _ReadAhead(b)
        assert s.recv(1) == b"0"
        assert s.pending() == 9
        assert s.recv(4) == b"1234"
        assert s.pending() == 5
        assert s.recv(100) == b"56789"
        assert s.pending() == 0
        assert s.fileno() == b.fileno()  # everything else is the socket's
    finally:
        a.close()
        b.close()


def test_read_ahead_wraps_each_new_socket() -> None:
    made = []

    class FakePaho:
        def _create_socket(self) -> object:
            made.append(object())
            return made[-1]

    paho = FakePaho()
    _read_ahead(paho)
    s1, s2 = paho._create_socket(), paho._create_socket()
    assert isinstance(s1, _ReadAhead) and isinstance(s2, _ReadAhead)
    assert s1._sock is made[0] and s2._sock is made[1]


def test_paused_reads_nothing_and_reports_nothing_pending() -> None:
    """Back-pressure: while paused, paho is told "nothing to read" (its packet state is kept)
    and aiomqtt's reader sees nothing pending; the bytes are all there after the pause."""
    a, b = socket.socketpair()
    try:
        a.sendall(b"abcdef")
        s = _ReadAhead(b)
        assert s.recv(2) == b"ab"
        s.paused = True
        assert s.pending() == 0
        with pytest.raises(BlockingIOError):
            s.recv(1)
        s.paused = False
        assert s.pending() == 4
        assert s.recv(10) == b"cdef"
    finally:
        a.close()
        b.close()


def _paho(manual_ack: bool) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311,
                       manual_ack=manual_ack)


@settings(max_examples=300, deadline=None)
@given(topic=st.binary(max_size=40) | st.text(max_size=30).map(str.encode),
       payload=st.binary(max_size=300), mid=st.integers(1, 65535), qos=st.integers(0, 2),
       flags=st.integers(0, 0x09), manual_ack=st.booleans())
def test_lean_publish_hands_over_what_paho_would(topic: bytes, payload: bytes, mid: int,
                                                 qos: int, flags: int, manual_ack: bool) -> None:
    """The lean PUBLISH handler gives the service the same (topic, payload, mid, qos) as paho's
    own handler and on_message, for any topic bytes (None when not UTF-8), QoS, dup and retain
    flag; and it sends a PUBACK exactly when paho would (QoS 1 without manual ack)."""
    packet = len(topic).to_bytes(2, "big") + topic
    packet += mid.to_bytes(2, "big") if qos else b""
    packet += payload
    command = 0x30 | (qos << 1) | (flags & 0x09)
    seen: dict[str, list[tuple[Any, ...]]] = {"paho": [], "lean": []}
    pubacks: dict[str, list[int]] = {"paho": [], "lean": []}
    for kind in ("paho", "lean"):
        c = _paho(manual_ack)

        def on_message(_c: Any, _u: Any, m: Any, kind: str = kind) -> None:
            try:
                t = m.topic
            except UnicodeDecodeError:
                t = None
            seen[kind].append((t, bytes(m.payload), m.mid, m.qos))

        c.on_message = on_message
        c._send_puback = lambda m, kind=kind: pubacks[kind].append(m) or 0  # noqa: SLF001
        if kind == "lean":
            _lean_publish(c, lambda *a, kind=kind: seen[kind].append(a))
        c._in_packet = {"command": command, "packet": packet}  # noqa: SLF001
        if qos == 2:
            c._send_pubrec = lambda m: 0  # noqa: SLF001
        try:
            c._handle_publish()  # noqa: SLF001
        except Exception as e:  # a malformed packet: both must refuse it the same way
            seen[kind].append(("raised", type(e).__name__))
    assert seen["lean"] == seen["paho"]
    assert pubacks["lean"] == pubacks["paho"]
