"""The gateway's MQTT client (gateway/mqtt/client.py) against the real Mosquitto, with paho as
the independent other side where one is needed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import paho.mqtt.client as paho
import pytest

from gateway.errors import BrokerError
from gateway.mqtt.client import Connection, Endpoint, session
from gateway.sim.broker import PrivateBroker, free_port
from gateway.wire.mqtt import V5, V311, ConnectOptions


def _endpoint(broker: PrivateBroker) -> Endpoint:
    return Endpoint("127.0.0.1", broker.port)


class _Got:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes, int, int]] = []
        self.event = asyncio.Event()

    def __call__(self, topic: bytes, payload: bytes, pid: int, qos: int) -> None:
        self.items.append((topic, payload, pid, qos))
        self.event.set()

    async def wait(self, n: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                self.event.clear()
                await self.event.wait()


def _paho_publish(broker: PrivateBroker, items: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 with paho and wait for every PUBACK."""
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho-pub")
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in items]
        for i in infos:
            i.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("version", [V311, V5])
def test_qos1_both_ways(broker: PrivateBroker, version: int) -> None:
    """We subscribe and receive paho's QoS 1 messages (auto PUBACK), and our QoS 1 publishes
    reach a paho subscriber and leave our in-flight set once the broker PUBACKs them."""
    got_by_paho: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()
    p = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho-sub")
    p.on_connect = lambda c, *_a: c.subscribe("to/paho", qos=1)
    p.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        got_by_paho.append(bytes(m.payload))
        if len(got_by_paho) == 50:
            arrived.set()

    p.on_message = on_message
    p.connect("127.0.0.1", broker.port)
    p.loop_start()

    async def main() -> None:
        assert subscribed.wait(10)
        got = _Got()
        async with session(_endpoint(broker), ConnectOptions("ours", 30, version=version),
                           got) as conn:
            assert await conn.subscribe([("to/us", 1)]) == [1]
            await asyncio.to_thread(_paho_publish, broker,
                                    [("to/us", b"m%d" % i) for i in range(100)])
            await got.wait(100)
            assert [x[1] for x in got.items] == [b"m%d" % i for i in range(100)]
            for i in range(50):
                conn.publish(b"to/paho", b"n%d" % i)
            async with asyncio.timeout(10):
                while conn.in_flight:
                    await asyncio.sleep(0.01)
        assert await asyncio.to_thread(arrived.wait, 10)

    try:
        asyncio.run(main())
    finally:
        p.disconnect()
        p.loop_stop()
    assert got_by_paho == [b"n%d" % i for i in range(50)]


def test_unacked_messages_come_again_on_the_persistent_session(broker: PrivateBroker) -> None:
    """The durability mechanism of the service: with manual_ack, messages not PUBACKed are
    redelivered when the same client id reconnects; PUBACKed ones are not."""
    opts = ConnectOptions("persistent-1", 30, clean=False)

    async def main() -> None:
        got = _Got()
        async with session(_endpoint(broker), opts, got, manual_ack=True) as conn:
            await conn.subscribe([("r", 1)])
            await asyncio.to_thread(_paho_publish, broker, [("r", b"%d" % i) for i in range(6)])
            await got.wait(6)
            conn.puback([pid for _t, p, pid, _q in got.items if int(p) < 3])
            await asyncio.sleep(0.2)
        again = _Got()
        async with session(_endpoint(broker), opts, again, manual_ack=True) as conn:
            assert conn.session_present
            await again.wait(3)
            await asyncio.sleep(0.3)
            assert sorted(p for _t, p, _i, _q in again.items) == [b"3", b"4", b"5"]

    asyncio.run(main())


def test_shared_subscription_spreads_messages(broker: PrivateBroker) -> None:
    """MQTT 5 shared subscriptions: each message goes to one member of the group."""

    async def main() -> None:
        a, b = _Got(), _Got()
        async with session(_endpoint(broker), ConnectOptions("sa", 30, version=V5), a) as ca, \
                session(_endpoint(broker), ConnectOptions("sb", 30, version=V5), b) as cb:
            for c in (ca, cb):
                assert await c.subscribe([("$share/g/s/+", 1)]) == [1]
            await asyncio.to_thread(_paho_publish, broker,
                                    [("s/x", b"%d" % i) for i in range(40)])
            async with asyncio.timeout(10):
                while len(a.items) + len(b.items) < 40:
                    await asyncio.sleep(0.02)
        payloads = sorted(int(p) for _t, p, _i, _q in a.items + b.items)
        assert payloads == list(range(40)) and a.items and b.items

    asyncio.run(main())


def test_keepalive_keeps_an_idle_connection(broker: PrivateBroker) -> None:
    async def main() -> None:
        async with session(_endpoint(broker), ConnectOptions("idle", 1), _Got()) as conn:
            await asyncio.sleep(3.5)  # > 1.5 x keepalive: the broker would have dropped us
            assert conn.is_open and not conn.closed.done()

    asyncio.run(main())


def test_broker_gone_and_refusals_say_what_to_do(broker: PrivateBroker) -> None:
    async def connect(endpoint: Endpoint, opts: ConnectOptions) -> Connection:
        async with session(endpoint, opts, _Got(), timeout=3) as conn:
            return conn

    with pytest.raises(BrokerError, match="cannot connect to the broker at 127.0.0.1"):
        asyncio.run(connect(Endpoint("127.0.0.1", free_port()), ConnectOptions("x")))

    async def dropped() -> None:
        got = _Got()
        async with session(_endpoint(broker), ConnectOptions("drop", 30), got) as conn:
            broker.kill()
            with pytest.raises(BrokerError, match="closed the connection|lost"):
                await asyncio.wait_for(conn.closed, 10)

    asyncio.run(dropped())
