"""The MQTT topics of iot-anchor (docs/protocol.md, "MQTT topics and acks")."""

from __future__ import annotations

READINGS_TOPIC = "anchor/+/readings"  # the gateway's subscription
CHECKPOINT_TOPIC = "anchor/checkpoint"  # retained: the latest signed checkpoint


def readings_topic(dev: str) -> str:
    return f"anchor/{dev}/readings"


def ack_topic(dev: str) -> str:
    return f"anchor/{dev}/ack"


def status_topic(dev: str) -> str:
    return f"anchor/{dev}/status"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: the broker hands each message to one member of `group`."""
    return f"$share/{group}/{topic_filter}"


def device_from_topic(topic: str) -> str | None:
    """anchor/<id>/readings -> <id>; None for anything else."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "anchor" and parts[2] == "readings" and parts[1]:
        return parts[1]
    return None


def device_from_topic_bytes(topic: bytes) -> str:
    """The same for a topic as it came off the wire; "" when it names no device or is not
    UTF-8 (such a reading is refused as topic_mismatch)."""
    return _device_of(topic, b"/readings")


def _device_of(topic: bytes, tail: bytes) -> str:
    """anchor/<id><tail> -> <id>; "" when the topic is not of that form or <id> is not UTF-8."""
    if topic[:7] == b"anchor/" and topic.endswith(tail):
        mid = topic[7:len(topic) - len(tail)]
        if mid and b"/" not in mid:
            try:
                return mid.decode()
            except UnicodeDecodeError:
                return ""
    return ""


def alert_topic(rule: str) -> str:
    """Where a rule's alert action publishes (docs/rules.md); rule names are topic-safe."""
    return f"anchor/alerts/{rule}"


CONFIRM_TOPIC = "anchor/+/confirm"  # the gateway's subscription: devices' confirmations


def cmd_topic(dev: str) -> str:
    return f"anchor/{dev}/cmd"


def confirm_topic(dev: str) -> str:
    return f"anchor/{dev}/confirm"


def device_from_confirm_topic(topic: bytes) -> str:
    """anchor/<id>/confirm -> <id>; "" for anything else."""
    return _device_of(topic, b"/confirm")
