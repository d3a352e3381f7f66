"""What Mosquitto 2.0 does with MQTT 5 shared subscriptions when a member is down: the facts
`run --shared` is designed on (docs/operations.md, "PostgreSQL and several gateways").

1. Messages go round robin over the group's members.
2. A member with a persistent session (session expiry > 0) that disconnects stays in the group:
   its share keeps being queued for it while it is down, and nobody else gets those messages
   until it comes back. So a gateway that died would hold readings back.
3. A member with a clean session (session expiry 0) leaves the group when its connection ends:
   the others get everything published afterwards.
4. QoS 1 messages a clean member received and had not PUBACKed when its connection died are
   not handed to another member: they are gone from the broker. The devices' outboxes
   republish them (their ack timeout), and another gateway anchors them.

Hence `run --shared` uses clean sessions and PUBACKs only after its commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.sim.broker import PrivateBroker

FILTER = "$share/g/anchor/+/readings"


class Member:
    def __init__(self, broker: PrivateBroker, cid: str, expiry: int, manual_ack: bool = False):
        self.got: list[bytes] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        self.c.on_message = lambda _c, _u, m: self.got.append(m.payload)
        subscribed: list[bool] = []
        self.c.on_subscribe = lambda *_a: subscribed.append(True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.c.connect("127.0.0.1", broker.port, clean_start=expiry == 0, properties=props)
        self.c.loop_start()
        self.c.subscribe(FILTER, qos=1)
        wait_for(lambda: bool(subscribed))

    def leave(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def die(self) -> None:
        """The connection ends without DISCONNECT and without PUBACKs (a SIGKILLed gateway)."""
        sock = self.c.socket()
        self.c.loop_stop()
        if sock is not None:
            sock.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def publish(broker: PrivateBroker, tag: str, n: int) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{tag}",
                    protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    for i in range(n):
        c.publish("anchor/d/readings", f"{tag}{i}".encode(), qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def tagged(got: list[bytes], tag: str) -> list[bytes]:
    return [m for m in got if m.startswith(tag.encode())]


def test_persistent_member_that_is_down_keeps_its_share(broker: PrivateBroker) -> None:
    a, b = Member(broker, "a", 3600), Member(broker, "b", 3600)
    publish(broker, "x", 10)
    wait_for(lambda: len(a.got) + len(b.got) == 10)
    assert len(a.got) == len(b.got) == 5  # round robin
    a.leave()
    publish(broker, "y", 20)
    wait_for(lambda: len(tagged(b.got, "y")) >= 10)
    time.sleep(0.5)
    assert len(tagged(b.got, "y")) == 10  # the other 10 wait for a, who is down
    back = Member(broker, "a", 3600)
    wait_for(lambda: len(tagged(back.got, "y")) == 10)
    back.leave()
    b.leave()


def test_clean_member_leaves_the_group_and_loses_its_in_flight_messages(
        broker: PrivateBroker) -> None:
    a, b = Member(broker, "a", 0, manual_ack=True), Member(broker, "b", 0)
    publish(broker, "x", 10)
    wait_for(lambda: len(a.got) + len(b.got) == 10)
    assert len(a.got) == 5  # received, never PUBACKed
    a.die()
    time.sleep(0.5)
    publish(broker, "y", 20)
    wait_for(lambda: len(tagged(b.got, "y")) == 20)  # the clean member left the group at once
    time.sleep(0.5)
    assert sorted(tagged(b.got, "x")) == sorted(set(tagged(b.got, "x")))
    assert len(tagged(b.got, "x")) == 5  # a's 5 unacknowledged ones were not handed over
    again = Member(broker, "a", 0)
    time.sleep(0.5)
    assert again.got == []  # nor kept for a's next (clean) connection
    again.leave()
    b.leave()
