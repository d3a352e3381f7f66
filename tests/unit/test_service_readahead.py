"""The service's read-ahead socket wrapper (gateway.service.runner._ReadAhead) on a real socketpair:
paho's read pattern (1 byte, length bytes, body) must see exactly the bytes sent, in order,
across buffer boundaries, with BlockingIOError when nothing is left and b"" at EOF. And the
lean PUBLISH handler, the lean packet reader, the coalesced writes and the PUBACKs of a batch
(gateway.service.runner._lean_publish, _lean_read, _coalesce_writes, _puback_all) against paho's own
behaviour: same packets handled, same bytes sent, in the same order."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.service.runner import (
    _coalesce_writes,
    _Inbound,
    _lean_puback,
    _lean_publish,
    _lean_read,
    _LeanAcks,
    _puback_all,
    _read_ahead,
    _ReadAhead,
)
from gateway.sim.loadgen import _varint  # MQTT's remaining length (to build test streams)


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


_packet_st = st.one_of(
    # PUBLISH, any QoS and flags, a topic that may not be UTF-8 or may be longer than the packet
    st.builds(lambda first, topic, tlen, payload: bytes([first]) + _varint(
        2 + len(topic) + 2 + len(payload)) + tlen.to_bytes(2, "big") + topic + b"\x00\x07"
        + payload,
        st.integers(0x30, 0x3F), st.binary(max_size=12), st.integers(0, 14),
        st.binary(max_size=400)),
    # PUBACK, SUBACK, PINGRESP, an unknown packet type, a body of any size
    st.builds(lambda first, body: bytes([first]) + _varint(len(body)) + body,
              st.sampled_from([0x40, 0x90, 0xD0, 0xF0]), st.binary(max_size=200)),
    # a remaining length of 5 bytes: a protocol error
    st.just(b"\x30\xff\xff\xff\xff\x01"),
)


@settings(max_examples=200, deadline=None)
@given(packets=st.lists(_packet_st, min_size=1, max_size=40),
       cuts=st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_lean_read_handles_what_paho_reads(packets: list[bytes], cuts: list[int]) -> None:
    """Fed the same bytes in the same pieces, the lean reader makes the same calls as paho's
    reader: the same readings taken, the same other packets handed to `_packet_handle` with the
    same packet state, in the same order, stopping at the same protocol error."""
    stream = b"".join(packets)
    logs: dict[str, list[Any]] = {}
    for kind in ("paho", "lean"):
        log: list[Any] = []
        c = _paho(True)
        real_handle = c._packet_handle  # noqa: SLF001

        def handle(c: Any = c, log: list[Any] = log, real: Any = real_handle) -> Any:
            ip = c._in_packet  # noqa: SLF001
            if ip["command"] & 0xF0 == 0x30:
                return real()  # a PUBLISH: what its handler does is logged
            log.append(("handle", ip["command"], bytes(ip["packet"]), ip["remaining_length"]))
            return 0

        c._packet_handle = handle  # noqa: SLF001
        c.on_message = lambda _c, _u, m, log=log: log.append(("message", m.mid, m.qos))
        c._send_pubrec = lambda m: 0  # noqa: SLF001
        publish = _lean_publish(c, lambda *a, log=log: log.append(("take", *a)))
        if kind == "lean":
            _lean_read(c, publish)
        a, b = socket.socketpair()
        b.setblocking(False)
        c._sock = _ReadAhead(b)  # noqa: SLF001
        try:
            pos, k = 0, 0
            while True:
                try:
                    rc = c._packet_read()  # noqa: SLF001
                except Exception as e:  # paho's PUBLISH handler on a malformed packet
                    log.append(("raised", type(e).__name__))
                    break
                log.append(("rc", int(rc)))
                if rc > 0:
                    break  # an error: paho's loop would close the connection here
                if rc == 0:
                    continue
                # rc -1, MQTT_ERR_AGAIN: nothing more buffered; send the next piece, if any
                if pos >= len(stream):
                    break
                n = cuts[k % len(cuts)]
                k += 1
                a.sendall(stream[pos:pos + n])
                pos += n
        finally:
            a.close()
            b.close()
        logs[kind] = log
    # the lean reader handles every whole buffered packet per call: compare what was handled
    # and the errors, not how many calls it took
    assert [e for e in logs["lean"] if e[0] != "rc" or e[1] > 0] == \
        [e for e in logs["paho"] if e[0] != "rc" or e[1] > 0]


class _StreamSocket:
    """A socket stand-in holding a whole stream: each `recv(n)` takes up to n bytes of it, and
    would block once it is all read (as a socket whose peer sent everything at once)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.reads = 0

    def recv(self, n: int) -> bytes:
        if self.pos >= len(self.data):
            raise BlockingIOError
        self.reads += 1
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def close(self) -> None:
        self.pos = len(self.data)


def test_lean_read_reads_whole_packets_itself() -> None:
    """Readings that arrive whole in the read-ahead buffer never reach paho's byte-wise
    reader: it only refills the buffer (once per 64 KiB read) and finishes a packet cut at the
    buffer's end. Every reading is taken, in order.
    (A socket pair fed by a thread made the count depend on how the kernel split the stream: on
    a busy machine it arrived in small pieces, each a refill.)"""
    c = _paho(True)
    fallbacks = []
    paho_read = c._packet_read  # noqa: SLF001

    def counted() -> Any:
        fallbacks.append(1)
        return paho_read()

    c._packet_read = counted  # noqa: SLF001
    taken: list[tuple[Any, ...]] = []
    _lean_read(c, _lean_publish(c, lambda *a: taken.append(a)))
    from gateway.sim.loadgen import publish_packet

    stream = b"".join(publish_packet(b"anchor/dev-%04d/readings" % (i % 50), bytes([i % 256]) * 180,
                                     i + 1) for i in range(2000))
    sock = _StreamSocket(stream)
    c._sock = _ReadAhead(sock)  # noqa: SLF001
    while len(taken) < 2000:
        assert c._packet_read() <= 0  # noqa: SLF001
    assert [t[2] for t in taken] == list(range(1, 2001))
    assert taken[7] == ("anchor/dev-0007/readings", bytes([7]) * 180, 8, 1)
    assert sock.reads == -(-len(stream) // 65536) == 7
    # once per refill (that call also finishes a packet cut at the previous buffer's end), not
    # once per reading
    assert len(fallbacks) == sock.reads, len(fallbacks)


class _TrickleSocket:
    """A socket stand-in that takes a random share of each send, or nothing (would block);
    with `whole`, always all of it."""

    def __init__(self, rng: random.Random, whole: bool = False) -> None:
        self.rng = rng
        self.whole = whole
        self.sent = bytearray()
        self.calls = 0

    def send(self, data: bytes) -> int:
        self.calls += 1
        if self.whole:
            self.sent += data
            return len(data)
        if self.rng.random() < 0.2:
            raise BlockingIOError
        n = self.rng.randint(1, len(data)) if self.rng.random() < 0.5 else len(data)
        self.sent += data[:n]
        return n

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["puback", "qos0", "qos1", "ping"]),
                              st.binary(max_size=300)), min_size=1, max_size=60),
       seed=st.integers(0, 2**32))
def test_coalesced_writes_send_what_paho_sends(ops: list[tuple[str, bytes]], seed: int) -> None:
    """Whatever paho queues (PUBACKs, QoS 0 and QoS 1 PUBLISHes, PINGREQ), and however the
    socket takes it (partial sends, would-block), the bytes on the wire are paho's own, in the
    same order; a QoS 0 PUBLISH is still reported published once it is sent, and no more
    send calls are made than paho makes."""
    results = {}
    for kind in ("paho", "lean"):
        c = _paho(True)
        c.on_socket_register_write = lambda *_a: None  # writes happen when loop_write is called
        sock = _TrickleSocket(random.Random(seed))
        c._sock = sock  # noqa: SLF001
        if kind == "lean":
            _coalesce_writes(c)
        infos = []
        for i, (op, data) in enumerate(ops):
            if op == "puback":
                c.ack(i + 1, 1)
            elif op == "ping":
                c._send_pingreq()  # noqa: SLF001
            else:
                infos.append(c.publish(f"t/{i}", data, qos=1 if op == "qos1" else 0))
            if i % 7 == 3:
                c.loop_write()  # some writes happen while more is being queued
        for _ in range(10_000):
            if not c.want_write():
                break
            c.loop_write()
        results[kind] = (bytes(sock.sent), [i.is_published() for i in infos])
    assert results["lean"] == results["paho"]


def test_coalesced_writes_take_one_send_per_batch() -> None:
    """4,096 PUBACKs and 1,000 QoS 1 acks queued after a commit leave in one send (paho: one
    per packet), up to WRITE_MAX bytes per send."""
    from gateway.service.runner import WRITE_MAX

    for lean in (False, True):
        c = _paho(True)
        c.on_socket_register_write = lambda *_a: None
        sock = _TrickleSocket(random.Random(1), whole=True)
        c.max_inflight_messages_set(0)  # all 1,000 acks go out now, as in the service
        c._sock = sock  # noqa: SLF001
        if lean:
            _coalesce_writes(c)
        for mid in range(1, 4097):
            c.ack(mid, 1)
        for i in range(1000):
            c.publish(f"anchor/d{i}/ack", b"x" * 40, qos=1)
        c.loop_write()
        assert not c.want_write()
        assert sock.calls == (-(-len(sock.sent) // WRITE_MAX) if lean else 5096)
    assert sock.calls == 1


@given(qos=st.lists(st.sampled_from([1, 1, 1, 2]), max_size=50),
       mids=st.lists(st.integers(1, 65535), min_size=50, max_size=50))
def test_puback_all_queues_what_paho_ack_would(qos: list[int], mids: list[int]) -> None:
    """A batch's PUBACKs, built in one step, are byte for byte what `ack(mid, qos)` per
    message queues, in the same order (a QoS 2 message's PUBCOMP in its place)."""
    msgs = [_Inbound("d", b"", mid, q, 1) for q, mid in zip(qos, mids, strict=False)]
    ref, lean = _paho(True), _paho(True)
    for c in (ref, lean):
        c.on_socket_register_write = lambda *_a: None
    for m in msgs:
        ref.ack(m.mid, m.qos)
    _puback_all(lean, msgs)
    wire = {k: b"".join(bytes(p["packet"]) for p in c._out_packet)  # noqa: SLF001
            for k, c in (("ref", ref), ("lean", lean))}
    assert wire["lean"] == wire["ref"]
    assert len(wire["ref"]) == 4 * len(msgs)


@given(dev=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF,
                                 exclude_characters="+#/"), min_size=1, max_size=70),
       payload=st.binary(max_size=300), first_mid=st.integers(0, 65534))
def test_lean_acks_send_paho_s_bytes_and_track_the_puback(dev: str, payload: bytes,
                                                          first_mid: int) -> None:
    """An ack sent by `_LeanAcks` is byte for byte paho's QoS 1 PUBLISH of the same topic and
    payload with the same packet id (from paho's counter), and the broker's PUBACK for it
    clears it, through the lean PUBACK handler, without touching paho's own messages."""
    from gateway.service.runner import ack_topic

    ref, lean = _paho(True), _paho(True)
    for c in (ref, lean):
        c.on_socket_register_write = lambda *_a: None
        c._sock = _TrickleSocket(random.Random(0))  # noqa: SLF001
        c._last_mid = first_mid  # noqa: SLF001
    info = ref.publish(ack_topic(dev), payload, qos=1)
    acks = _LeanAcks(lean)
    assert acks.publish(ack_topic(dev), payload)
    assert bytes(lean._out_packet[0]["packet"]) == bytes(ref._out_packet[0]["packet"])  # noqa: SLF001
    assert acks.waiting == {info.mid} and not lean._out_messages  # noqa: SLF001
    _lean_puback(lean, acks.acked)
    lean._in_packet = {"command": 0x40, "packet": bytearray(info.mid.to_bytes(2, "big"))}  # noqa: SLF001
    assert lean._handle_pubackcomp("PUBACK") == 0  # noqa: SLF001
    assert acks.waiting == set()
    lean._sock = None  # noqa: SLF001
    assert not acks.publish(ack_topic(dev), payload)  # no connection: the caller keeps the ack
