"""MQTT 3.1.1 client for MicroPython asyncio (Unix port, ESP32, RP2), written for iot-anchor.

What it does:
- QoS 0 and QoS 1 publish; QoS 1 keeps the message in `inflight` until the PUBACK arrives and
  retransmits it with the DUP flag after `response_timeout` s, up to `retries` times, after which
  the connection is treated as dead.
- QoS 1 subscriptions: an incoming QoS 1 PUBLISH is passed to `on_message(topic, payload,
  retained)` first and acknowledged (PUBACK) only when the callback returned, so a message that
  the callback could not handle (it raised) is redelivered.
- keepalive: a PINGREQ when nothing was sent for keepalive/2 s; the connection is dead when
  nothing was received for 1.5 x keepalive s (MQTT 3.1.1 section 3.1.2.10).
- last will (`set_last_will`) and a "birth" message published after every connect
  (`set_birth`): the device uses both on anchor/<id>/status, retained "offline" / "online".
- `run()`: the reconnect supervisor. It connects, subscribes again to every registered topic,
  publishes the birth message, and when the connection dies it reconnects after an exponential
  backoff with jitter (equal jitter: half the delay fixed, half random).
- TLS where the port has `ssl` (`mqtts://`); this Unix build has none, and asking for TLS
  without it raises ValueError at construction, not later.

Failures: every network failure surfaces as OSError (timeouts become OSError(ETIMEDOUT), a closed
connection OSError(ECONNRESET), a broker refusal OSError(ECONNREFUSED)); `run()` catches exactly
OSError. Protocol errors from the broker (malformed packets) also close the connection as OSError.

clean_session: default False with a stable client id, so the broker keeps our subscription and
queues QoS 1 messages for us (the gateway's acks) while we are offline. On a reconnect that finds
the session present, unacknowledged QoS 1 publishes are sent again with DUP, as MQTT 3.1.1
section 4.4 requires. The device resends its own readings from the flash outbox anyway, so a
clean session would also be correct, only with more republishing.

Network: `wait_network`, an async function (a board's Wi-Fi join), is awaited before every
connection attempt.

Transport: `connector(host, port, ssl)` is an async function returning a stream with `write(b)`,
`async drain()`, `async readexactly(n)` and `async wait_closed()`; the default is
asyncio.open_connection (non-blocking socket). Tests pass a fake stream and assert the bytes.

Construction: the client is made by mqtt_setup.make_client(client_id, host, ...), which also
parses broker URLs (parse_url, redact_url): start-up code, a cold companion (COLD) that the
device drops once the client is built, so the class has no constructor here.

Memory: one 5-byte header buffer and one packet buffer (256 bytes, grown to the largest packet)
reused for every packet; inflight holds references to the caller's topic/payload objects (no
copies); max_inflight bounds it. Each packet goes out in one write (see write_packet). Once
connected, nothing waits with asyncio.wait_for, a Lock or an Event (each wait_for call allocates two
tasks and a generator, live while it waits, and a device's heap is small): a drain that takes longer
than response_timeout is caught by the ticker (`wt`, the start of the drain in progress, which also
keeps packets whole: one drain at a time), and waiting for an acknowledgement or a state change
polls the state every _POLL_MS (5 ms, only while something is awaited); the supervisor waits for the
reader task to end, which _fail() brings about. asyncio.wait_for_ms is left to the connection
attempt.
"""

import asyncio
import os
import struct
import time

from micropython import const

try:
    import ssl as _ssl
except ImportError:
    _ssl = None

from errno import ECONNREFUSED, ECONNRESET, EIO, ENOTCONN, ETIMEDOUT

COLD = ("mqtt_setup", "error_text")

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

_MAX_RLEN = const(268435455)
_POLL_MS = const(5)     # waiting for a PUBACK, a SUBACK, a connection or its loss


# ---------------------------------------------------------------------------------------------
# Encoding. Pure functions, tested byte for byte.

def encode_length(n, buf=None, off=0):
    """Remaining Length (MQTT 3.1.1 section 2.2.3): 1 to 4 bytes, 7 bits each, low first.

    Requires 0 <= n <= 268435455. With `buf`, writes at `off` and returns the byte count;
    without, returns the encoded bytes.
    """
    if n < 0 or n > _MAX_RLEN:
        from anchor import error_text  # the message: error path only

        raise ValueError(error_text.mqtt_length(n))
    out = buf if buf is not None else bytearray(4)
    i = off
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out[i] = b | 0x80
            i += 1
        else:
            out[i] = b
            i += 1
            break
    if buf is not None:
        return i - off
    return bytes(out[:i])


def _bytes(s):
    return s.encode() if isinstance(s, str) else bytes(s)


def publish_header(buf, topic_len, payload_len, qos=0, retain=False, dup=False):
    """Fill the fixed header of a PUBLISH into buf (5 bytes); returns its length.

    The packet on the wire is: header, 2-byte topic length, topic, [2-byte packet id], payload.
    """
    buf[0] = _PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return 1 + encode_length(2 + topic_len + (2 if qos else 0) + payload_len, buf, 1)


def _field(b):
    """A length-prefixed UTF-8 string / binary field (2-byte big-endian length)."""
    if len(b) > 65535:
        from anchor import error_text

        raise ValueError(error_text.mqtt_length(len(b), True))
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id, keepalive=60, clean_session=False, will=None, user=None,
                   password=None):
    """The CONNECT packet. will = (topic, message, retain, qos) or None."""
    flags = 0x02 if clean_session else 0
    payload = _field(_bytes(client_id))
    if will is not None:
        wtopic, wmsg, wretain, wqos = will
        flags |= 0x04 | (wqos << 3) | (0x20 if wretain else 0)
        payload += _field(_bytes(wtopic)) + _field(_bytes(wmsg))
    if user is not None:
        flags |= 0x80
        payload += _field(_bytes(user))
        if password is not None:
            flags |= 0x40
            payload += _field(_bytes(password))
    var = b"\x00\x04MQTT\x04" + struct.pack("!BH", flags, keepalive)
    return bytes([_CONNECT]) + encode_length(len(var) + len(payload)) + var + payload


def subscribe_packet(pid, topic, qos=1):
    body = struct.pack("!H", pid) + _field(_bytes(topic)) + bytes([qos])
    return bytes([_SUBSCRIBE]) + encode_length(len(body)) + body


def puback_packet(pid):
    return struct.pack("!BBH", _PUBACK, 2, pid)


async def _open(host, port, ssl):
    # MicroPython's reader and writer are the same Stream object
    if ssl:
        r, _ = await asyncio.open_connection(host, port, ssl=ssl)
    else:
        r, _ = await asyncio.open_connection(host, port)
    return r


# ---------------------------------------------------------------------------------------------

class MQTTClient:
    """An asyncio MQTT 3.1.1 client. See the module docstring for the behaviour.

    Made by mqtt_setup.make_client (its arguments are listed there). Typical use:
        c = make_client("dev-1", "127.0.0.1", 1883)
        c.set_last_will("anchor/dev-1/status", b"offline", retain=True)
        c.set_birth("anchor/dev-1/status", b"online", retain=True)
        c.on_message = handler            # handler(topic: bytes, payload: bytes, retained)
        c.subscribe("anchor/dev-1/ack", 1)
        asyncio.create_task(c.run())      # connects and reconnects forever
        await c.wait_connected()
        await c.publish("anchor/dev-1/readings", msg, qos=1)"""

    # Attributes (make_client sets every one; there is no constructor, see the module docstring):
    #   settings      client_id, host, port, keepalive (s), clean_session, ssl (None or an
    #                 SSLContext), user, password, response_ms, retries, max_inflight,
    #                 backoff_min_ms, backoff_max_ms, max_packet, connector, wait_network, tick_ms
    #                 (the ticker's period): make_client's arguments
    #   registered    will, birth: (topic, msg, retain, qos) or None; subs: [(topic, qos)], sent
    #                 again on every connect; on_message: the callback, or None
    #   state         inflight: pid -> [topic, payload, retain, sent ticks_ms, tries]; stream: the
    #                 connection's, None while down; session_present; error: the OSError that
    #                 ended the last connection or attempt
    #   counters      connects, failures (failed attempts), retransmits, pings, received
    #   internal      only the methods change these: pid (the last packet id given out); up (the
    #                 stream is usable, from CONNACK on); ready (subscribed and birth sent too:
    #                 isconnected()); closing (disconnect() was called); tasks (the connection's
    #                 reader and ticker); hdr (5 bytes: a PUBLISH's fixed header); buf (packet
    #                 assembly, grown to the largest packet); wt (ticks_ms when the drain in
    #                 progress started, else None); subacks (pid -> SUBACK code, None while
    #                 awaited)
    # connect() sets the private _down, _last_rx and _last_tx before anything reads them.

    # -- configuration --------------------------------------------------------------------

    def set_last_will(self, topic, msg, retain=True, qos=1):
        self.will = (_bytes(topic), _bytes(msg), retain, qos)

    def set_birth(self, topic, msg, retain=True, qos=1):
        self.birth = (_bytes(topic), _bytes(msg), retain, qos)

    def subscribe(self, topic, qos=1):
        """Register a subscription; it is (re)sent on every connect, and now if connected."""
        t = _bytes(topic)
        self.subs.append((t, qos))
        if self.up:
            asyncio.create_task(self._subscribe_now(t, qos))

    # -- state ----------------------------------------------------------------------------

    def isconnected(self):
        """True once connected, subscribed and the birth message sent, until a failure."""
        return self.ready

    async def wait_connected(self):
        while not self.ready:
            await asyncio.sleep_ms(_POLL_MS)

    # -- one connection -------------------------------------------------------------------

    async def connect(self):
        """One connection attempt: CONNECT, CONNACK, subscriptions, birth message.

        Returns session_present. Raises OSError on any failure (and leaves nothing open).
        """
        if self.stream is not None:
            await self.close()
        self._down = False
        try:
            self.stream = await asyncio.wait_for_ms(
                self.connector(self.host, self.port, self.ssl), self.response_ms)
        except asyncio.TimeoutError:
            raise OSError(ETIMEDOUT)
        try:
            pkt = connect_packet(self.client_id, self.keepalive, self.clean_session, self.will,
                                 self.user, self.password)
            await self.write_packet(pkt)
            try:
                typ, body = await asyncio.wait_for_ms(self._read_packet(), self.response_ms)
            except asyncio.TimeoutError:
                raise OSError(ETIMEDOUT)
            if typ & 0xF0 != _CONNACK or len(body) != 2:
                raise OSError(EIO)
            if body[1] != 0:
                # 1 bad protocol, 2 id rejected, 3 unavailable, 4 bad user/pass, 5 not authorised
                raise OSError(ECONNREFUSED)
            self.session_present = bool(body[0] & 1)
            now = time.ticks_ms()
            self._last_rx = now
            self.up = True
            self.connects += 1
            self.tasks = [asyncio.create_task(self._reader()),
                           asyncio.create_task(self._ticker())]
            if self.session_present:
                # MQTT 3.1.1 section 4.4: resend unacknowledged publishes with DUP
                for pid in list(self.inflight):
                    await self._resend(pid)
            else:
                for e in self.inflight.values():
                    e[4] = -1   # dropped: publish(wait=True) raises instead of returning
                self.inflight = {}
            for t, q in self.subs:
                await self._subscribe_now(t, q)
            if self.birth is not None:
                bt, bm, br, bq = self.birth
                await self.publish(bt, bm, retain=br, qos=bq)
        except BaseException as e:
            await self.close()
            if isinstance(e, (EOFError, asyncio.TimeoutError)):
                raise OSError(ECONNRESET)
            raise
        self.ready = True
        return self.session_present

    async def _subscribe_now(self, topic, qos):
        pid = self._next_pid()
        self.subacks[pid] = None
        await self.write_packet(subscribe_packet(pid, topic, qos))
        t0 = time.ticks_ms()
        while self.subacks.get(pid) is None:
            if not self.up:
                raise OSError(ENOTCONN)
            if time.ticks_diff(time.ticks_ms(), t0) > self.response_ms:
                self.subacks.pop(pid, None)
                raise OSError(ETIMEDOUT)
            await asyncio.sleep_ms(_POLL_MS)
        code = self.subacks.pop(pid)
        if code == 0x80:
            raise OSError(ECONNREFUSED)   # the broker refused the subscription (ACL)

    def _next_pid(self):
        pid = self.pid
        while True:
            pid = pid + 1 if pid < 65535 else 1
            if pid not in self.inflight and pid not in self.subacks:
                self.pid = pid
                return pid

    # -- sending --------------------------------------------------------------------------

    async def write_packet(self, *parts):
        """Write parts as one packet. One packet at a time: while a drain is in progress (`wt`
        holds when it started), another writer waits for it to end. A drain that takes more
        than response_timeout fails the connection (OSError(ETIMEDOUT)): the ticker checks, and
        so does a writer waiting for it."""
        s = self.stream
        if s is None:
            raise OSError(ENOTCONN)
        while self.wt is not None and s is self.stream:
            if time.ticks_diff(time.ticks_ms(), self.wt) > self.response_ms:
                self._fail(OSError(ETIMEDOUT))
                raise OSError(ETIMEDOUT)
            await asyncio.sleep_ms(1)
        if s is not self.stream:
            raise OSError(ENOTCONN)
        self.wt = time.ticks_ms()
        try:
            try:
                if len(parts) == 1:
                    s.write(parts[0])
                else:
                    # One write per packet: written piecewise, Nagle's algorithm holds the later
                    # small segments until the broker's delayed ACK (40 ms on Linux), which
                    # limited a QoS 1 publish loop with one message in flight to 22 messages/s
                    # (measured). So the parts are copied into the reused packet buffer.
                    n = 0
                    for p in parts:
                        n += len(p)
                    if len(self.buf) < n:
                        self.buf = bytearray(n + 64)
                    mv = memoryview(self.buf)
                    o = 0
                    for p in parts:
                        k = len(p)
                        mv[o:o + k] = p
                        o += k
                    s.write(mv[:n])
                await s.drain()
            except OSError as e:
                self._fail(e)
                raise
        finally:
            if s is self.stream:   # not a new connection's writer's
                self.wt = None
        self._last_tx = time.ticks_ms()

    async def publish(self, topic, payload, retain=False, qos=0, wait=False):
        """Publish; returns the packet id (0 for QoS 0).

        QoS 1 waits for a free inflight slot first. With wait=True it also waits for the PUBACK
        (retransmitting as needed). Raises OSError when not connected or the connection dies,
        or when a reconnect without the session dropped the message before its PUBACK.
        """
        t = _bytes(topic)
        if not self.up:
            raise OSError(ENOTCONN)
        pid = 0
        if qos:
            while len(self.inflight) >= self.max_inflight:
                await asyncio.sleep_ms(_POLL_MS)
                if not self.up:
                    raise OSError(ENOTCONN)
            pid = self._next_pid()
            e = self.inflight[pid] = [t, payload, retain, time.ticks_ms(), 0]
        await self._send_publish(t, payload, qos, pid, retain, False)
        if wait and qos:
            while self.inflight.get(pid) is e:
                if not self.up:
                    raise OSError(ENOTCONN)
                await asyncio.sleep_ms(_POLL_MS)
            if e[4] < 0:    # dropped by a reconnect that found no session: never acknowledged
                raise OSError(ECONNRESET)
        return pid

    async def _send_publish(self, t, payload, qos, pid, retain, dup):
        h = self.hdr
        n = publish_header(h, len(t), len(payload), qos, retain, dup)
        if qos:
            await self.write_packet(memoryview(h)[:n], struct.pack("!H", len(t)), t,
                              struct.pack("!H", pid), payload)
        else:
            await self.write_packet(memoryview(h)[:n], struct.pack("!H", len(t)), t, payload)

    async def _resend(self, pid):
        e = self.inflight.get(pid)
        if e is None:
            return
        e[3] = time.ticks_ms()
        e[4] += 1
        self.retransmits += 1
        await self._send_publish(e[0], e[1], 1, pid, e[2], True)

    # -- receiving ------------------------------------------------------------------------

    async def _read_packet(self):
        s = self.stream
        b = await s.readexactly(1)
        typ = b[0]
        n = 0
        shift = 0
        for _ in range(4):
            c = (await s.readexactly(1))[0]
            n |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                break
        else:
            raise OSError(EIO)
        if n > self.max_packet:
            raise OSError(EIO)     # far larger than anything we subscribed for
        body = await s.readexactly(n) if n else b""
        self._last_rx = time.ticks_ms()
        return typ, body

    async def _reader(self):
        try:
            while True:
                typ, body = await self._read_packet()
                await self._handle(typ, body)
        except EOFError:
            self._fail(OSError(ECONNRESET))
        except OSError as e:
            self._fail(e)
        except Exception:   # a malformed packet (IndexError), MemoryError: drop the connection
            self._fail(OSError(EIO))

    async def _handle(self, typ, body):
        kind = typ & 0xF0
        if kind == _PUBLISH:
            qos = (typ >> 1) & 3
            tlen = (body[0] << 8) | body[1]
            topic = body[2:2 + tlen]
            off = 2 + tlen
            pid = 0
            if qos:
                if qos > 1:
                    raise OSError(EIO)     # we never subscribe with QoS 2
                pid = (body[off] << 8) | body[off + 1]
                off += 2
            self.received += 1
            cb = self.on_message
            if cb is not None:
                try:
                    cb(topic, body[off:], bool(typ & 1))
                except Exception as e:  # a bug in the handler must not kill the reader
                    # no PUBACK: with clean_session=False the broker redelivers on reconnect
                    print("mqtt: on_message failed: %r" % (e,))
                    return
            if qos:
                await self.write_packet(puback_packet(pid))
        elif kind == _PUBACK:
            if len(body) == 2:
                self.inflight.pop((body[0] << 8) | body[1], None)
        elif kind == _SUBACK:
            if len(body) >= 3:
                pid = (body[0] << 8) | body[1]
                if pid in self.subacks:
                    self.subacks[pid] = 0x80 if body[2] == 0x80 else 0
        elif kind == _PINGRESP:
            pass
        else:
            raise OSError(EIO)

    # -- keepalive, retransmission --------------------------------------------------------

    async def _ticker(self):
        ka = self.keepalive * 1000
        try:
            while self.up:
                await asyncio.sleep_ms(self.tick_ms)
                now = time.ticks_ms()
                if ka and time.ticks_diff(now, self._last_rx) > ka + ka // 2:
                    raise OSError(ETIMEDOUT)
                w = self.wt
                if w is not None:   # a packet is being written: no resend or ping now
                    if time.ticks_diff(now, w) > self.response_ms:
                        raise OSError(ETIMEDOUT)    # its drain is stuck
                    continue
                for pid in list(self.inflight):
                    e = self.inflight.get(pid)
                    if e is not None and time.ticks_diff(now, e[3]) >= self.response_ms:
                        if e[4] >= self.retries:
                            raise OSError(ETIMEDOUT)
                        await self._resend(pid)
                if ka and time.ticks_diff(now, self._last_tx) >= ka // 2:
                    self.pings += 1
                    await self.write_packet(PINGREQ)
        except OSError as e:
            self._fail(e)
        except Exception:
            self._fail(OSError(EIO))

    # -- failure and reconnect ------------------------------------------------------------

    def _fail(self, exc):
        """Mark the connection dead (idempotent). The supervisor tears it down: it waits for
        the reader task to end, so the reader is cancelled here unless it is the caller."""
        if self.up or self.stream is not None:
            if self.error is None or self.up:
                self.error = exc
            self.up = False
            self.ready = False
            self._down = True
            if self.tasks:
                try:
                    self.tasks[0].cancel()
                except RuntimeError:    # the reader failing itself: it ends anyway
                    pass

    async def close(self):
        """Close the connection and stop its tasks, without DISCONNECT (run() reconnects)."""
        self.up = False
        self.ready = False
        cur = asyncio.current_task()
        for t in self.tasks:
            if t is not cur:
                t.cancel()
        self.tasks = []
        self.wt = None
        s, self.stream = self.stream, None
        if s is not None:
            try:
                await s.wait_closed()
            except Exception:
                pass
        self.subacks = {}

    async def run(self):
        """Connect, and reconnect with exponential backoff and jitter, until disconnect()."""
        delay = self.backoff_min_ms
        while not self.closing:
            try:
                if self.wait_network is not None:
                    await self.wait_network()     # e.g. Wi-Fi join on a board
                await self.connect()
                delay = self.backoff_min_ms
            except OSError as e:
                self.error = e
                self.failures += 1
                # equal jitter: half the delay fixed, half random (os.urandom: no `random`
                # module needed)
                half = delay // 2
                await asyncio.sleep_ms(half + int.from_bytes(os.urandom(4), "big") % (half + 1))
                delay = min(delay * 2, self.backoff_max_ms)
                continue
            try:
                await self.tasks[0]    # the reader: it ends when the connection does
            except asyncio.CancelledError:
                if not self._down:
                    raise               # this task is being cancelled, not the reader
            await self.close()

    async def disconnect(self):
        """Clean shutdown: DISCONNECT (so the broker discards the will) and close."""
        self.closing = True
        if self.up:
            try:
                await self.write_packet(DISCONNECT)
            except OSError:
                pass
        self._fail(OSError(ENOTCONN))
        await self.close()

    def abort(self):
        """Drop the connection without DISCONNECT (the broker then publishes the will)."""
        self._fail(OSError(ECONNRESET))

