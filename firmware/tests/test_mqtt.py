# MicroPython tests of anchor/mqtt.py against a fake stream, asserting the exact bytes.
# Run: micropython firmware/tests/test_mqtt.py [test_name ...]. Expected bytes are written out
# by hand from the MQTT 3.1.1 specification (sections 2.2.3, 3.1, 3.3, 3.4, 3.8, 3.12), not
# produced by the code under test.

import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _here + "/..")

import asyncio
import binascii
import struct
import time
from errno import ECONNREFUSED, ECONNRESET, EIO, ENOTCONN, ETIMEDOUT

import runner

from anchor import mqtt
from anchor.mqtt_setup import make_client, parse_url


def h(s):
    """Hex with spaces and | separators allowed, for annotated expected bytes."""
    return binascii.unhexlify(s.replace(" ", "").replace("|", ""))


def publish_packet(topic, payload, qos=0, pid=0, retain=False):
    """A whole PUBLISH packet: mqtt.publish_header's fixed header, then the topic, the packet id
    (QoS 1) and the payload, as MQTT 3.1.1 section 3.3 lays them out."""
    hdr = bytearray(5)
    n = mqtt.publish_header(hdr, len(topic), len(payload), qos, retain)
    pid_bytes = struct.pack("!H", pid) if qos else b""
    return bytes(hdr[:n]) + struct.pack("!H", len(topic)) + topic.encode() + pid_bytes + payload


class FakeStream:
    """Stands in for the asyncio stream over a socket: records writes, serves fed bytes."""

    def __init__(self):
        self.sent = bytearray()
        self.writes = 0
        self.inbox = bytearray()
        self.eof = False
        self.closed = False
        self.ev = asyncio.Event()

    def feed(self, b):
        self.inbox += b
        self.ev.set()

    def hangup(self):
        self.eof = True
        self.ev.set()

    def write(self, b):
        if self.closed:
            raise OSError(32)
        self.sent += b
        self.writes += 1

    async def drain(self):
        await asyncio.sleep_ms(0)

    async def readexactly(self, n):
        while len(self.inbox) < n:
            if self.eof or self.closed:
                raise EOFError
            self.ev.clear()
            await self.ev.wait()
        r = bytes(self.inbox[:n])
        self.inbox = self.inbox[n:]
        return r

    async def wait_closed(self):
        self.closed = True
        self.ev.set()


class Connector:
    def __init__(self, *streams):
        self.streams = list(streams)
        self.calls = []

    async def __call__(self, host, port, ssl):
        self.calls.append((host, port, ssl, time.ticks_ms()))
        if not self.streams:
            raise OSError(111)
        s = self.streams.pop(0)
        if isinstance(s, Exception):
            raise s
        return s


CONNACK = h("20 02 00 00")
CONNACK_SP = h("20 02 01 00")          # session present


def run(coro):
    return asyncio.run(coro)


async def until(cond, ms=2000):
    t0 = time.ticks_ms()
    while not cond():
        if time.ticks_diff(time.ticks_ms(), t0) > ms:
            raise AssertionError("condition not met within %d ms" % ms)
        await asyncio.sleep_ms(5)


# ---------------------------------------------------------------------------------------------

def test_remaining_length_edges():
    cases = [
        (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (16383, "ff7f"),
        (16384, "808001"), (2097151, "ffff7f"), (2097152, "80808001"),
        (268435455, "ffffff7f"),
    ]
    for n, hx in cases:
        got = mqtt.encode_length(n)
        assert got == h(hx), (n, got)
    for bad in (-1, 268435456):
        try:
            mqtt.encode_length(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("no error for %d" % bad)


def test_publish_header_at_127_and_128():
    # topic "t" (2+1 bytes) + pid (2) + payload: remaining length 127 needs payload 122
    p = publish_packet("t", b"x" * 122, qos=1, pid=7)
    assert p[:2] == h("32 7f"), p[:4]
    assert p[2:7] == h("0001 74 0007")
    assert len(p) == 2 + 127
    p = publish_packet("t", b"x" * 123, qos=1, pid=7)
    assert p[:3] == h("32 80 01")
    assert len(p) == 3 + 128
    # 16383 / 16384 with QoS 0 (2+1 topic, no pid)
    p = publish_packet("t", b"y" * (16383 - 3))
    assert p[:3] == h("30 ff 7f") and len(p) == 3 + 16383
    p = publish_packet("t", b"y" * (16384 - 3))
    assert p[:4] == h("30 80 80 01") and len(p) == 4 + 16384


def test_connect_packet_with_will():
    got = mqtt.connect_packet("dev-1", 60, False,
                              ("anchor/dev-1/status", b"offline", True, 1))
    want = h(
        "10 2f"                    # CONNECT, remaining length 47
        "| 0004 4d515454 04"       # protocol name "MQTT", level 4
        "| 2c"                     # flags: will retain 0x20, will QoS 1 0x08, will 0x04
        "| 003c"                   # keepalive 60 s
        "| 0005 6465762d31"        # client id "dev-1"
        "| 0013 616e63686f722f6465762d312f737461747573"   # will topic anchor/dev-1/status
        "| 0007 6f66666c696e65"    # will message "offline"
    )
    assert got == want, binascii.hexlify(got)


def test_connect_packet_clean_user_password():
    got = mqtt.connect_packet("c", 0, True, None, "u", "pw")
    want = h("10 14 | 0004 4d515454 04 | c2 | 0000 | 0001 63 | 0001 75 | 0002 7077")
    assert got == want, binascii.hexlify(got)


def test_subscribe_puback_ping_disconnect_bytes():
    assert mqtt.subscribe_packet(1, "anchor/d/ack", 1) == h(
        "82 11 | 0001 | 000c 616e63686f722f642f61636b | 01")
    assert mqtt.puback_packet(0x1234) == h("40 02 1234")
    assert mqtt.PINGREQ == h("c0 00")
    assert mqtt.DISCONNECT == h("e0 00")


def _client(conn, **kw):
    c = make_client("dev-1", "127.0.0.1", 1883, connector=conn, **kw)
    return c


def test_connect_subscribe_birth_sequence():
    async def main():
        s = FakeStream()
        # broker replies, in order: CONNACK, SUBACK pid 1 QoS 1 (PUBACK for the birth below)
        s.feed(CONNACK + h("90 03 0001 01"))
        conn = Connector(s)
        c = _client(conn, keepalive=60)
        c.set_last_will("anchor/dev-1/status", "offline", retain=True, qos=1)
        c.set_birth("anchor/dev-1/status", "online", retain=True, qos=1)
        c.subscribe("anchor/dev-1/ack", 1)
        sp = await c.connect()
        assert sp is False
        assert c.isconnected()
        assert list(c.inflight) == [2]
        s.feed(h("40 02 0002"))
        await until(lambda: not c.inflight)
        want = (mqtt.connect_packet("dev-1", 60, False,
                                    (b"anchor/dev-1/status", b"offline", True, 1))
                + h("82 15 | 0001 | 0010 616e63686f722f6465762d312f61636b | 01")
                # PUBLISH, QoS 1, retain: 0x33; rl 29 = 2+19 topic + 2 pid + 6 payload
                + h("33 1d | 0013 616e63686f722f6465762d312f737461747573 | 0002 |"
                    " 6f6e6c696e65"))
        assert bytes(s.sent) == want, binascii.hexlify(s.sent)
        assert conn.calls[0][:3] == ("127.0.0.1", 1883, None)
        await c.disconnect()
        assert bytes(s.sent).endswith(h("e0 00"))
        assert s.closed
    run(main())


def test_connack_refused_raises_and_closes():
    async def main():
        s = FakeStream()
        s.feed(h("20 02 00 05"))           # not authorised
        c = _client(Connector(s))
        try:
            await c.connect()
        except OSError as e:
            assert e.errno == ECONNREFUSED
        else:
            raise AssertionError("refused CONNACK accepted")
        assert s.closed and not c.isconnected()
    run(main())


def test_connack_timeout():
    async def main():
        s = FakeStream()                   # the broker never answers
        c = _client(Connector(s), response_timeout=0.05)
        try:
            await c.connect()
        except OSError as e:
            assert e.errno == ETIMEDOUT
        else:
            raise AssertionError("no timeout")
        assert s.closed
    run(main())


def test_publish_qos1_packet_ids_and_puback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s))
        await c.connect()
        s.sent = bytearray()
        p1 = await c.publish("anchor/dev-1/readings", b"\xd2\x01", qos=1)
        p2 = await c.publish("anchor/dev-1/readings", b"\xd2\x02", qos=1)
        assert (p1, p2) == (1, 2)
        topic = "0015 616e63686f722f6465762d312f72656164696e6773"   # anchor/dev-1/readings
        # PUBLISH QoS 1 (0x32), remaining length 27 = 2 + 21 + 2 (pid) + 2 (payload)
        want = h("32 1b |" + topic + "| 0001 | d201") + h("32 1b |" + topic + "| 0002 | d202")
        assert bytes(s.sent) == want, binascii.hexlify(s.sent)
        assert sorted(c.inflight) == [1, 2]
        s.feed(h("40 02 0002"))
        await until(lambda: 2 not in c.inflight)
        assert list(c.inflight) == [1]
        s.feed(h("40 02 0001"))
        await until(lambda: not c.inflight)
        # QoS 0, retained: 0x31, no packet id
        s.sent = bytearray()
        assert await c.publish("a/b", b"hi", retain=True) == 0
        assert bytes(s.sent) == h("31 07 0003 612f62 6869")
        await c.disconnect()
    run(main())


def test_one_write_per_packet():
    # Written piecewise, Nagle + delayed ACK cost 40 ms per QoS 1 round trip (22 msg/s).
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s))
        await c.connect()
        assert s.writes == 1
        await c.publish("anchor/dev-1/readings", b"r" * 300, qos=1)   # larger than the buffer
        assert s.writes == 2
        await c.publish("t", b"x", qos=0)
        assert s.writes == 3
        assert bytes(s.sent[-6:]) == h("30 04 0001 74 78")
        await c.disconnect()
    run(main())


def test_dup_retransmission_then_puback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s), response_timeout=0.1, tick_ms=10, retries=3)
        await c.connect()
        s.sent = bytearray()
        await c.publish("t/x", b"AB", qos=1)
        first = h("32 09 0003 742f78 0001 4142")
        dup = h("3a 09 0003 742f78 0001 4142")     # same packet, DUP flag 0x08
        await until(lambda: len(s.sent) >= 2 * len(first), 1000)
        assert bytes(s.sent[:len(first)]) == first
        assert bytes(s.sent[len(first):2 * len(first)]) == dup
        assert c.retransmits >= 1
        s.feed(h("40 02 0001"))
        await until(lambda: not c.inflight)
        n = len(s.sent)
        await asyncio.sleep_ms(250)
        assert len(s.sent) == n            # nothing resent after the PUBACK
        assert c.isconnected()
        await c.disconnect()
    run(main())


def test_retransmission_gives_up_and_drops_connection():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s), response_timeout=0.05, tick_ms=10, retries=2)
        await c.connect()
        await c.publish("t", b"z", qos=1)
        await until(lambda: not c.isconnected(), 2000)
        assert c.error.errno == ETIMEDOUT
        assert c.retransmits == 2
        await c.close()
        assert s.closed
    run(main())


def test_publish_wait_true_returns_after_puback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s))
        await c.connect()

        async def acker():
            await until(lambda: len(s.sent) > 14)
            s.feed(h("40 02 0001"))
        asyncio.create_task(acker())
        pid = await c.publish("t", b"q", qos=1, wait=True)
        assert pid == 1 and not c.inflight
        await c.disconnect()
    run(main())


def test_incoming_qos1_publish_gets_puback_after_callback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        got = []
        c = _client(Connector(s))
        c.on_message = lambda t, p, r: got.append((bytes(t), bytes(p), r, len(s.sent)))
        await c.connect()
        base = len(s.sent)
        # QoS 1 PUBLISH from the broker: 0x32, topic "a/ack", pid 0x0102, payload a1 00 01
        s.feed(h("32 0c 0005 612f61636b 0102 a10001"))
        await until(lambda: len(s.sent) >= base + 4)
        assert got == [(b"a/ack", h("a10001"), False, base)]   # callback ran before the PUBACK
        assert bytes(s.sent[base:]) == h("40 02 0102")
        # QoS 0 retained: callback, no PUBACK
        s.feed(h("31 07 0003 632f70 6869"))
        await until(lambda: len(got) == 2)
        assert got[1][:3] == (b"c/p", b"hi", True)
        await asyncio.sleep_ms(20)
        assert len(s.sent) == base + 4
        await c.disconnect()
    run(main())


def test_callback_error_means_no_puback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s))

        def bad(t, p, r):
            raise ValueError("handler bug")
        c.on_message = bad
        await c.connect()
        base = len(s.sent)
        s.feed(h("32 08 0001 61 0005 0102"))
        await asyncio.sleep_ms(50)
        assert len(s.sent) == base
        assert c.isconnected()               # the reader survived
        await c.disconnect()
    run(main())


def test_pingreq_when_idle_and_dead_connection_timeout():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s), keepalive=1, tick_ms=20)
        await c.connect()
        base = len(s.sent)
        await until(lambda: len(s.sent) >= base + 2, 1500)
        assert bytes(s.sent[base:base + 2]) == h("c0 00")
        t_ping = time.ticks_ms()
        s.feed(h("d0 00"))                    # PINGRESP keeps it alive
        await asyncio.sleep_ms(100)
        assert c.isconnected() and c.pings >= 1
        # from now on the broker is silent: dead after 1.5 x keepalive without input
        await until(lambda: not c.isconnected(), 3000)
        assert c.error.errno == ETIMEDOUT
        waited = time.ticks_diff(time.ticks_ms(), t_ping)
        assert 1300 <= waited <= 2200, waited
        await c.close()
    run(main())


def test_oversized_and_qos2_packets_drop_connection():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s), max_packet=64)
        await c.connect()
        s.feed(h("30 80 01"))                 # announces 128 bytes > max_packet
        await until(lambda: not c.isconnected())
        assert c.error.errno == EIO
        await c.close()
        s2 = FakeStream()
        s2.feed(CONNACK + h("34 06 0001 61 0001 00"))   # a QoS 2 PUBLISH
        c = _client(Connector(s2))
        await c.connect()
        await until(lambda: not c.isconnected())
        assert c.error.errno == EIO
        await c.close()
    run(main())


def test_reconnect_resubscribes_and_resends_with_dup():
    async def main():
        s1, s2 = FakeStream(), FakeStream()
        s1.feed(CONNACK + h("90 03 0001 01"))
        s2.feed(CONNACK_SP)
        conn = Connector(s1, s2)
        c = _client(conn, backoff_min=0.02, backoff_max=0.1)
        c.subscribe("a/ack", 1)
        task = asyncio.create_task(c.run())
        await c.wait_connected()
        await c.publish("r", b"1", qos=1)      # pid 2, never acked on s1
        s1.hangup()                           # the broker goes away
        sub = h("82 0a 0003 0005 612f61636b 01")
        await until(lambda: bytes(s2.sent).endswith(sub), 2000)
        assert not c.isconnected()            # not before the subscription is confirmed
        s2.feed(h("90 03 0003 01"))
        await until(lambda: len(conn.calls) == 2 and c.isconnected(), 2000)
        assert s1.closed
        # on s2: CONNECT, the unacked publish again with DUP (session present), SUBSCRIBE
        cp = mqtt.connect_packet("dev-1", 60, False, None)
        assert bytes(s2.sent[:len(cp)]) == cp
        rest = bytes(s2.sent[len(cp):])
        assert rest == h("3a 06 0001 72 0002 31") + sub, binascii.hexlify(rest)
        assert c.connects == 2
        await c.disconnect()
        await task
    run(main())


async def _running_on_two_streams(**kw):
    """A client running on s1, with s2 ready for its reconnect; neither keeps a session."""
    s1, s2 = FakeStream(), FakeStream()
    s1.feed(CONNACK)
    s2.feed(CONNACK)
    c = _client(Connector(s1, s2), **kw)
    task = asyncio.create_task(c.run())
    await c.wait_connected()
    return s1, s2, c, task


def test_reconnect_without_session_forgets_inflight():
    async def main():
        s1, s2, c, task = await _running_on_two_streams(backoff_min=0.02)
        await c.publish("r", b"1", qos=1)
        s1.hangup()
        await until(lambda: c.connects == 2 and c.isconnected())
        cp = mqtt.connect_packet("dev-1", 60, False, None)
        assert bytes(s2.sent) == cp and not c.inflight
        await c.disconnect()
        await task
    run(main())


def test_publish_wait_raises_when_a_reconnect_without_session_drops_it():
    # The connection dies before the PUBACK and the reconnect finds no session: the message is
    # forgotten, so publish(wait=True) must raise, never report it acknowledged, however fast
    # the reconnect is (here within one 5 ms poll of the waiter: it used to return the pid).
    async def main():
        s1, s2, c, task = await _running_on_two_streams(backoff_min=0.001, backoff_max=0.002)
        out = []

        async def waiter():
            try:
                out.append(await c.publish("r", b"1", qos=1, wait=True))
            except OSError as e:
                out.append(e.errno)
        asyncio.create_task(waiter())
        await until(lambda: len(s1.sent) > len(mqtt.connect_packet("dev-1", 60, False, None)))
        s1.hangup()
        await until(lambda: out, 2000)
        assert out[0] in (ECONNRESET, ENOTCONN), out
        await until(lambda: c.connects == 2 and c.isconnected())
        assert not c.inflight
        await c.disconnect()
        await task
    run(main())


def test_backoff_grows_with_jitter():
    async def main():
        conn = Connector()                    # every attempt fails: connection refused
        c = _client(conn, backoff_min=0.02, backoff_max=0.16)
        task = asyncio.create_task(c.run())
        await until(lambda: len(conn.calls) >= 7, 3000)
        await c.disconnect()                  # never connected: run() ends after its sleep
        t = [x[3] for x in conn.calls]
        gaps = [time.ticks_diff(t[i + 1], t[i]) for i in range(len(t) - 1)]
        nominal = [20, 40, 80, 160, 160, 160]
        for g, d in zip(gaps, nominal):
            assert d // 2 - 2 <= g <= d + 25, (gaps, nominal)
        assert c.error.errno == 111 and c.failures >= 6
        await task
    run(main())


def test_publish_when_down_raises_oserror():
    async def main():
        c = _client(Connector())
        try:
            await c.publish("t", b"x", qos=1)
        except OSError:
            pass
        else:
            raise AssertionError("publish while disconnected did not raise OSError")
    run(main())


def test_inflight_window_blocks_until_puback():
    async def main():
        s = FakeStream()
        s.feed(CONNACK)
        c = _client(Connector(s), max_inflight=2)
        await c.connect()
        await c.publish("t", b"1", qos=1)
        await c.publish("t", b"2", qos=1)
        done = []

        async def third():
            done.append(await c.publish("t", b"3", qos=1))
        asyncio.create_task(third())
        await asyncio.sleep_ms(50)
        assert not done
        s.feed(h("40 02 0001"))
        await until(lambda: done == [3])
        await c.disconnect()
    run(main())


def test_parse_url_and_tls_guard():
    assert parse_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False, None, None)
    assert parse_url("mqtt://broker") == ("broker", 1883, False, None, None)
    assert parse_url("mqtts://broker/") == ("broker", 8883, True, None, None)
    assert parse_url("mqtt://dev-1:s3cr%3At@10.0.0.2:1884") == \
        ("10.0.0.2", 1884, False, "dev-1", "s3cr:t")
    assert parse_url("mqtts://dev-1@h") == ("h", 8883, True, "dev-1", None)
    for bad in ("tcp://x:1", "mqtt://:1883", "mqtt://h:port"):
        try:
            parse_url(bad)
        except ValueError as e:
            assert bad in str(e)
        else:
            raise AssertionError(bad)
    for bad in ("mqtt://u:pw@h:port", "mqtt://u:pw@", "mqtt://@h", "mqtt://u:%zz@h"):
        try:
            parse_url(bad)
        except ValueError as e:
            assert "pw" not in str(e)            # never echo a password
        else:
            raise AssertionError(bad)
    try:
        import ssl  # noqa: F401
    except ImportError:
        try:
            make_client("d", "h", 8883, ssl=True)
        except ValueError as e:
            assert "ssl" in str(e)
        else:
            raise AssertionError("TLS without ssl accepted")


# ---------------------------------------------------------------------------------------------

runner.main(globals())
