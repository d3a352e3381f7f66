"""PrivateBroker keeps its promise: restart() keeps sessions and their queued QoS 1 messages.

The tests that restart the broker under a device or the gateway (test_mqtt_client,
test_mqtt_client_device, the fault tests) count on it. Run as root, Mosquitto used to drop to
user "mosquitto", fail every save of its persistence file, and lose a message that was on its
way to a subscriber when it stopped; the firmware soak test failed that way now and then.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from gateway.broker import PrivateBroker


class _Sub:
    """A paho client with a persistent session that records what it gets."""

    def __init__(self, port: int) -> None:
        self.got: list[bytes] = []
        self.session_present: bool | None = None
        self.ready = threading.Event()
        self.event = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="keeper",
                             clean_session=False)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.session_present = bool(flags.session_present)
        c.subscribe("keep/x", qos=1)

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        self.got.append(bytes(m.payload))
        self.event.set()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_restart_keeps_sessions_and_queued_messages(tmp_path: Path) -> None:
    with PrivateBroker(workdir=tmp_path / "b") as b:
        sub = _Sub(b.port)
        assert sub.ready.wait(10), "the subscriber did not subscribe"
        sub.close()                                   # offline: the broker queues for it
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sender")
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        try:
            pub.publish("keep/x", b"queued", qos=1).wait_for_publish(10)
        finally:
            pub.disconnect()
            pub.loop_stop()
        b.restart()
        sub = _Sub(b.port)
        try:
            assert sub.event.wait(10), "the queued message did not survive the restart"
            assert sub.got == [b"queued"] and sub.session_present is True
        finally:
            sub.close()
        log = b.log_path.read_text()
    assert "Error" not in log, log
