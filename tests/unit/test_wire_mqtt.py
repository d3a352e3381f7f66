"""The MQTT codec (gateway/wire/mqtt.py): exact bytes as MQTT 3.1.1 and 5.0 give them, and a
stream split into packets however it is cut.

Expected bytes are written out by hand from the specs' sections named beside each one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire import mqtt as w


def test_varint_examples_of_the_spec() -> None:
    # MQTT 3.1.1 section 2.2.3, table 2.4: the limits of one to four bytes
    cases = [(0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
             (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f")]
    for n, want in cases:
        assert w.varint(n).hex() == want
        assert w.read_varint(bytes.fromhex(want), 0, len(want) // 2) == (n, len(want) // 2)
    with pytest.raises(ValueError):
        w.varint(268435456)
    assert w.read_varint(b"\x80\x80", 0, 2) is None  # cut short
    with pytest.raises(w.MalformedPacket):
        w.read_varint(b"\x80\x80\x80\x80\x01", 0, 5)


def test_connect_311() -> None:
    # 3.1.1 section 3.1: "MQTT", level 4, flags (clean session 0x02), keepalive, client id
    assert w.connect_packet(w.ConnectOptions("ab", 30)).hex() == \
        "100e" "00044d515454" "04" "02" "001e" "00026162"
    # persistent session with user and password: flags 0x80 | 0x40, no clean-session bit
    got = w.connect_packet(w.ConnectOptions("c", 60, clean=False, username="u", password="p"))
    assert got.hex() == "1013" "00044d515454" "04" "c0" "003c" "000163" "000175" "000170"


def test_connect_5_persistent_session_properties() -> None:
    # 5.0 section 3.1.2.11: properties after keepalive; 0x11 session expiry (4 bytes),
    # 0x21 receive maximum (2 bytes)
    got = w.connect_packet(w.ConnectOptions("g", 30, clean=False, version=w.V5,
                                            session_expiry=3600, receive_maximum=100))
    assert got.hex() == ("1016" "00044d515454" "05" "00" "001e"
                         "08" "1100000e10" "210064" "000167")
    clean = w.connect_packet(w.ConnectOptions("g", 30, version=w.V5))
    assert clean.hex() == "1011" "00044d515454" "05" "02" "001e" "03" "21ffff" "000167"


def test_connect_with_will() -> None:
    got = w.connect_packet(w.ConnectOptions("d", 5, will=("s", b"off", 1, True)))
    # flags: clean 0x02 | will 0x04 | will QoS 1 0x08 | will retain 0x20 = 0x2e
    assert got.hex() == "1015" "00044d515454" "04" "2e" "0005" "000164" "000173" "00036f6666"


def test_publish_puback_subscribe() -> None:
    # 3.1.1 section 3.3: PUBLISH QoS 1 (0x32), topic "t", packet id 7, payload "hi"
    assert w.publish_packet(b"t", b"hi", 7).hex() == "3207" "000174" "0007" "6869"
    assert w.publish_packet(b"t", b"hi", 7, dup=True)[0] == 0x3A
    assert w.publish_packet(b"t", b"hi", 0, qos=0, retain=True).hex() == "3105" "000174" "6869"
    # 5.0 section 3.3.2.3: a property length of 0 after the packet id
    assert w.publish_packet(b"t", b"hi", 7, version=w.V5).hex() == "3208" "000174" "0007" "00" \
        "6869"
    # a remaining length above 127 takes two bytes
    assert w.publish_packet(b"t", bytes(200), 1)[1:3] == bytes([(205 % 128) | 0x80, 205 // 128])
    # section 3.4: PUBACK is 0x40 0x02 and the packet id, one after the other for many
    assert w.puback_packets([1, 0x1234]).hex() == "40020001" "40021234"
    # section 3.8: SUBSCRIBE 0x82, packet id, topic filter, requested QoS
    assert w.subscribe_packet(1, [("a/b", 1)]).hex() == "8208" "0001" "0003612f62" "01"
    assert w.subscribe_packet(2, [("a", 0)], w.V5).hex() == "8207" "0002" "00" "000161" "00"


def test_parse_connack_suback_puback() -> None:
    assert w.parse_connack(b"\x01\x00", w.V311) == w.Connack(True, 0)
    assert w.parse_connack(b"\x00\x05", w.V311).reason == "not authorized"
    # MQTT 5: properties; 0x21 receive maximum 20, 0x1f reason string
    ack = w.parse_connack(bytes.fromhex("0087" "07" "210014" "1f000178"), w.V5)
    assert ack.code == 0x87 and ack.properties == {0x21: 20, 0x1F: "x"}
    assert ack.reason == "not authorized (x)"
    # a 3.1.1-only broker answers a version-5 CONNECT with its own 2-byte refusal
    assert w.parse_connack(b"\x00\x01", w.V5).reason == "unacceptable protocol version"
    for bad in (b"", b"\x02\x00", b"\x00\x00\x00"):
        with pytest.raises(w.MalformedPacket):
            w.parse_connack(bad, w.V311)
    assert w.parse_suback(bytes.fromhex("0001" "01" "80"), w.V311) == (1, [1, 0x80])
    assert w.parse_suback(bytes.fromhex("0001" "00" "01"), w.V5) == (1, [1])
    assert w.parse_puback(b"\x00\x07") == (7, 0)
    assert w.parse_puback(b"\x00\x07\x10\x00") == (7, 0x10)


def test_parse_publish() -> None:
    p = w.parse_publish(0x33, bytes.fromhex("000174" "0007" "6869"), w.V311)
    assert p == w.Publish(b"t", b"hi", 7, 1, True, False)
    p5 = w.parse_publish(0x30, bytes.fromhex("000174" "0401000203" "6869"), w.V5)
    assert p5.payload == b"hi" and p5.pid == 0
    for first, body in ((0x36, b"\x00\x01t\x00\x01"), (0x32, b"\x00\x09t"),
                        (0x32, b"\x00\x01t\x00\x00hi"), (0x30, b"\x00")):
        with pytest.raises(w.MalformedPacket):
            w.parse_publish(first, body, w.V311)


packets = st.lists(
    st.builds(lambda topic, payload, pid: w.publish_packet(topic, payload, pid),
              st.binary(min_size=1, max_size=40), st.binary(max_size=300),
              st.integers(1, 65535)),
    min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(packets, st.lists(st.integers(0, 10_000), max_size=8))
def test_split_packets_whatever_the_cuts(pkts: list[bytes], cuts: list[int]) -> None:
    """A stream fed in arbitrary pieces yields exactly the packets sent, in order."""
    stream = b"".join(pkts)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    got: list[bytes] = []
    buf = b""
    start = 0
    for b in bounds:
        buf += stream[start:b]
        start = b
        whole, rest = w.split_packets(buf)
        got += [bytes(buf[s - (2 if e - s < 128 else 3):e]) for _, s, e in whole]
        buf = buf[rest:]
    assert got == pkts and buf == b""
