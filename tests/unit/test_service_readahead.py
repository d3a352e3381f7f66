"""The service's read-ahead socket wrapper (gateway.service._ReadAhead) on a real socketpair:
paho's read pattern (1 byte, length bytes, body) must see exactly the bytes sent, in order,
across buffer boundaries, with BlockingIOError when nothing is left and b"" at EOF."""

from __future__ import annotations

import random
import socket

import pytest

from gateway.service import _read_ahead, _ReadAhead


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
