"""The asyncio MQTT client (gateway/mqtt/client.py) over a fake transport: the exact bytes it
writes, what it hands over from a stream cut anywhere, PUBACK timing, back-pressure.
tests/integration/test_mqtt_client_broker.py runs it against the real Mosquitto."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gateway.errors import BrokerError
from gateway.mqtt.client import Connection
from gateway.wire import mqtt as w


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _connection(manual_ack: bool = True, version: int = w.V311
                ) -> tuple[Connection, FakeTransport, list[tuple[bytes, bytes, int, int]],
                           list[int]]:
    got: list[tuple[bytes, bytes, int, int]] = []
    pubacks: list[int] = []
    conn = Connection(version, 0, lambda *a: got.append(a), pubacks.append, manual_ack)
    t = FakeTransport()
    conn.connection_made(t)
    return conn, t, got, pubacks


async def _step() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_writes_of_one_step_leave_in_one_write() -> None:
    async def main() -> None:
        conn, t, _, _ = _connection()
        pid1 = conn.publish(b"anchor/d/ack", b"x")
        pid2 = conn.publish(b"anchor/checkpoint", b"cp", retain=True)
        conn.puback([5, 6])
        assert t.written == []  # not before the event loop's next step
        await _step()
        assert t.written == [w.publish_packet(b"anchor/d/ack", b"x", pid1)
                             + w.publish_packet(b"anchor/checkpoint", b"cp", pid2, retain=True)
                             + bytes.fromhex("40020005" "40020006")]
        assert conn.in_flight == {pid1, pid2} and pid1 != pid2
        conn.data_received(bytes.fromhex("4002") + pid1.to_bytes(2, "big"))
        assert conn.in_flight == {pid2}

    asyncio.run(main())


def test_stream_cut_anywhere_hands_over_every_message_in_order() -> None:
    async def main() -> None:
        msgs = [(b"anchor/d%d/readings" % (i % 7), bytes([i % 256]) * (i % 300), i + 1)
                for i in range(500)]
        stream = b"".join(w.publish_packet(t_, p, pid) for t_, p, pid in msgs)
        stream += bytes.fromhex("d000")  # PINGRESP in between is fine
        rng = random.Random(5)
        for _ in range(20):
            conn, _t, got, _ = _connection()
            pos = 0
            while pos < len(stream):
                n = rng.choice([1, 2, 3, 50, 700, 5000])
                conn.data_received(stream[pos:pos + n])
                pos += n
            assert [(a, b, c) for a, b, c, _q in got] == msgs
            assert {q for *_x, q in got} == {1}

    asyncio.run(main())


def test_auto_puback_and_manual_puback() -> None:
    async def main() -> None:
        data = w.publish_packet(b"t", b"a", 3) + w.publish_packet(b"t", b"b", 4)
        conn, t, got, _ = _connection(manual_ack=False)
        conn.data_received(data)
        await _step()
        assert t.written == [bytes.fromhex("40020003" "40020004")]  # one write for both
        conn2, t2, got2, _ = _connection(manual_ack=True)
        conn2.data_received(data)
        await _step()
        assert t2.written == [] and len(got2) == 2  # the application decides when

    asyncio.run(main())


def test_mqtt5_publish_and_puback_with_reason() -> None:
    async def main() -> None:
        conn, _t, got, pubacks = _connection(version=w.V5)
        pid = conn.publish(b"x", b"y")
        props = bytes.fromhex("03" "230001")  # topic alias 1: skipped
        body = b"\x00\x01t" + b"\x00\x09" + props + b"hi"
        conn.data_received(bytes([0x32, len(body)]) + body)
        conn.data_received(bytes.fromhex("4004") + pid.to_bytes(2, "big") + b"\x10\x00")
        assert got == [(b"t", b"hi", 9, 1)] and pubacks == [pid] and not conn.in_flight

    asyncio.run(main())


def test_pause_holds_the_rest_of_the_read_until_resumed() -> None:
    """Back-pressure: once paused (here by the handler itself, as the service does at its inbox
    limit), no further message is handed over, even from the read under way, and the socket
    is not read; after resume_reading the held messages come, in order, before new ones."""

    async def main() -> None:
        got: list[bytes] = []
        conn: Connection

        def take(_t: bytes, payload: bytes, _pid: int, _q: int) -> None:
            got.append(payload)
            if len(got) == 3:
                conn.pause_reading()

        conn = Connection(w.V311, 0, take, None, True)
        t = FakeTransport()
        conn.connection_made(t)
        stream = b"".join(w.publish_packet(b"t", b"%d" % i, i + 1) for i in range(10))
        conn.data_received(stream[:len(stream) // 2])
        assert got == [b"0", b"1", b"2"] and not t.reading
        conn.data_received(stream[len(stream) // 2:])  # delivered after the pause: held too
        assert len(got) == 3
        conn.resume_reading()
        assert len(got) == 3 and not t.reading  # handled on the next step, then reading
        await _step()
        assert got == [b"%d" % i for i in range(10)] and t.reading

    asyncio.run(main())


def test_subscribe_waits_for_its_suback() -> None:
    async def main() -> None:
        conn, t, _, _ = _connection()
        task = asyncio.create_task(conn.subscribe([("anchor/+/readings", 1)]))
        await _step()
        pid = int.from_bytes(t.written[0][2:4], "big")
        assert t.written[0] == w.subscribe_packet(pid, [("anchor/+/readings", 1)])
        assert not task.done()
        conn.data_received(bytes.fromhex("9003") + pid.to_bytes(2, "big") + b"\x01")
        assert await task == [1]

    asyncio.run(main())


@pytest.mark.parametrize("data", [
    bytes.fromhex("3604000174" "01"),  # PUBLISH at QoS 3
    bytes.fromhex("3403000174"),  # QoS 2: never subscribed at
    bytes.fromhex("32030009aa"),  # a topic length past the packet
    bytes.fromhex("f000"),  # AUTH on MQTT 3.1.1
    bytes.fromhex("30ffffffff01"),  # a remaining length past four bytes
])
def test_a_protocol_error_closes_the_connection_and_says_what(data: bytes) -> None:
    async def main() -> None:
        conn, t, got, _ = _connection()
        conn.data_received(data)
        assert t.closed and got == []
        conn.connection_lost(None)
        with pytest.raises(BrokerError) as e:
            conn.closed.result()
        assert "broker" in e.value.what

    asyncio.run(main())


def test_lost_connection_fails_waiters_and_publish() -> None:
    async def main() -> None:
        conn, _t, _, _ = _connection()
        task = asyncio.create_task(conn.subscribe([("a", 1)]))
        await _step()
        conn.connection_lost(ConnectionResetError("reset"))
        with pytest.raises(BrokerError):
            await task
        with pytest.raises(BrokerError):
            conn.publish(b"t", b"x")
        assert not conn.is_open

    asyncio.run(main())
