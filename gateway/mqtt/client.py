"""An asyncio MQTT 3.1.1 / 5.0 client: one connection, callbacks on the event loop.

The service (`iot-anchor run`) and the load engine both use it; its packets are
`gateway/wire/mqtt.py`. What it does:

- CONNECT with a clean or a persistent session, user name and password, over TCP or TLS;
  `session()` returns once the broker's CONNACK accepted it, and raises `BrokerError` naming
  the refusal otherwise;
- received PUBLISH packets go to `on_publish(topic, payload, pid, qos)` as they are parsed,
  in arrival order; a QoS 1 one is PUBACKed once handed over, or, with `manual_ack`, when the
  application calls `puback`: the service acknowledges a reading to the broker only after the
  batch holding it committed;
- `publish` at QoS 0 and 1; a QoS 1 publish stays in `in_flight` until the broker's PUBACK,
  which `on_puback(pid)` also reports;
- `subscribe` waits for the SUBACK and returns the granted codes;
- keepalive: a PINGREQ after `keepalive / 2` seconds without sending, and the connection is
  closed when nothing came from the broker for 1.5 x keepalive;
- `pause_reading` / `resume_reading` (TCP back-pressure: the broker keeps what is not read);
- writes made in one event-loop step leave in one `transport.write` (a batch's PUBACKs and the
  devices' acks are thousands of small packets).

A protocol error from the broker (a malformed packet, QoS 2, an unknown packet type) closes the
connection; `closed` then holds a `BrokerError` that says what came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import BrokerError, ConfigError
from gateway.wire import mqtt as wire
from gateway.wire.broker_url import BrokerUrl

log = logging.getLogger("iot_anchor.mqtt")

OnPublish = Callable[[bytes, bytes, int, int], None]  # topic, payload, packet id, QoS
OnPuback = Callable[[int], None]

_PUBLISH, _PUBACK = 0x30, 0x40
_CONTROL = {wire.CONNACK, wire.SUBACK, wire.PINGRESP, wire.DISCONNECT}


def tls_context() -> ssl.SSLContext:
    """mqtts://: verify the broker against the system CAs, or $IOT_ANCHOR_BROKER_CA."""
    cafile = os.environ.get("IOT_ANCHOR_BROKER_CA") or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the broker CA certificate {cafile}: {e}",
                          "set IOT_ANCHOR_BROKER_CA to a readable PEM file") from e


@dataclass(frozen=True)
class Endpoint:
    """Where to connect and as whom."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: BrokerUrl) -> Endpoint:
        return cls(url.host, url.port, tls_context() if url.tls else None, url.username,
                   url.password)


class BrokerRefused(BrokerError):
    """The broker answered the CONNECT with a refusal; `code` is its CONNACK code."""

    def __init__(self, what: str, hint: str, code: int) -> None:
        super().__init__(what, hint)
        self.code = code


PROTOCOL_REFUSALS = (1, 0x84)  # "unacceptable / unsupported protocol version"


class Connection(asyncio.Protocol):
    """One MQTT connection. Made by `session()`; every method runs on the event loop."""

    def __init__(self, version: int, keepalive: int, on_publish: OnPublish,
                 on_puback: OnPuback | None, manual_ack: bool = False) -> None:
        self.version = version
        self.manual_ack = manual_ack
        self.keepalive = keepalive
        self._on_publish = on_publish
        self._on_puback = on_puback
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._rest = b""  # bytes read and not handled: a packet cut short, or a paused tail
        self._paused = False
        self._resuming = False  # resume_reading ran; the bytes held are handled next
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._last_sent = self._last_received = time.monotonic()
        self._pid = 0
        self.in_flight: set[int] = set()  # our QoS 1 publishes the broker has not PUBACKed
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self.connack: asyncio.Future[wire.Connack] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._error: BrokerError | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.session_present = False  # from the CONNACK
        self.connack_properties: dict[int, int | str] = {}  # MQTT 5: those the CONNACK gave

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            why = f"the connection to the broker was lost ({exc})" if exc else \
                "the broker closed the connection"
            self._error = BrokerError(why, "the client reconnects by itself")
        self._transport = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        waiting: list[asyncio.Future[Any]] = [self.connack, *self._subacks.values()]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(self._error)
                fut.exception()  # retrieved: a waiter still gets it, none is warned about
        self._subacks.clear()
        if self._pinger is not None:
            self._pinger.cancel()
        if not self.closed.done():
            self.closed.set_exception(self._error)
            self.closed.exception()  # retrieved here: nobody may be waiting for it

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self._paused or self._resuming:  # handled in order once reading resumes
            self._rest += data
            return
        if self._rest:
            data = self._rest + data
            self._rest = b""
        try:
            self._handle(data)
        except wire.MalformedPacket as e:
            self._fail(f"the broker sent a malformed packet ({e})")

    def _handle(self, data: bytes) -> None:
        """Every whole packet in `data`; the incomplete tail waits in `_rest`."""
        on_publish = self._on_publish
        v5 = self.version == wire.V5
        received: list[int] | None = None if self.manual_ack else []
        packets, end = wire.split_packets(data)
        pos = 0
        for first, start, stop in packets:
            length = stop - start
            kind = first & 0xF0
            if kind == _PUBLISH:
                qos = (first >> 1) & 3
                if qos == 1 and not v5 and length >= 4:  # the readings: parsed in line
                    t_end = start + 2 + ((data[start] << 8) | data[start + 1])
                    if t_end + 2 > stop:
                        raise wire.MalformedPacket("PUBLISH: the topic runs past the packet")
                    pid = (data[t_end] << 8) | data[t_end + 1]
                    if not pid:
                        raise wire.MalformedPacket("PUBLISH: packet id 0 at QoS 1")
                    on_publish(data[start + 2:t_end], data[t_end + 2:stop], pid, 1)
                    if received is not None:
                        received.append(pid)
                else:
                    p = wire.parse_publish(first, data[start:stop], self.version)
                    if p.qos == 2:
                        raise wire.MalformedPacket("PUBLISH at QoS 2: this client subscribes "
                                                   "at QoS 1 at most")
                    on_publish(p.topic, p.payload, p.pid, p.qos)
                    if received is not None and p.qos:
                        received.append(p.pid)
            elif kind == _PUBACK:
                if length < 2:
                    raise wire.MalformedPacket("PUBACK: no packet id")
                pid = (data[start] << 8) | data[start + 1]
                self.in_flight.discard(pid)
                if self._on_puback is not None:
                    self._on_puback(pid)
            else:
                self._control(first, data[start:stop])
            if self._transport is None:
                return  # closed while handling
            pos = stop
            if self._paused:
                break
        else:
            pos = end  # every whole packet handled; the rest is an incomplete one
        if pos < len(data):
            self._rest = data[pos:]
        if received:
            self.puback(received)

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.CONNACK:
            ack = wire.parse_connack(body, self.version)
            if not self.connack.done():
                self.connack.set_result(ack)
        elif kind == wire.SUBACK:
            pid, codes = wire.parse_suback(body, self.version)
            fut = self._subacks.pop(pid, None)
            if fut is not None and not fut.done():
                fut.set_result(codes)
        elif kind == wire.PINGRESP:
            pass
        elif kind == wire.DISCONNECT and self.version == wire.V5:
            code, reason = wire.parse_disconnect(body)
            text = wire.CONNACK_REASONS.get(code, f"code 0x{code:02x}")
            self._fail(f"the broker disconnected us: {text}" + (f" ({reason})" if reason else ""))
        else:
            raise wire.MalformedPacket(f"unexpected packet type {kind} from the broker")

    # -- sending ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._transport is None:
            raise self._error or BrokerError("not connected to the broker", "connect first")
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._last_sent = time.monotonic()

    def _next_pid(self) -> int:
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.in_flight and self._pid not in self._subacks:
                return self._pid
        raise BrokerError("65,535 messages wait for the broker's PUBACK",
                          "the broker does not answer; it will be reconnected")

    def send_connect(self, options: wire.ConnectOptions) -> None:
        self._send(wire.connect_packet(options))

    def accepted(self, ack: wire.Connack) -> None:
        """The broker accepted the CONNECT: note what it said and start the keepalive."""
        self.session_present = ack.session_present
        self.connack_properties = ack.properties
        if self.keepalive:
            self._pinger = self._loop.create_task(self._keepalive(), name="mqtt-keepalive")

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    def publish(self, topic: bytes, payload: bytes, qos: int = 1, retain: bool = False,
                dup: bool = False) -> int:
        """Queue a PUBLISH; returns its packet id (0 at QoS 0). Raises BrokerError when the
        connection is closed."""
        pid = self._next_pid() if qos else 0
        self._send(wire.publish_packet(topic, payload, pid, qos=qos, retain=retain, dup=dup,
                                       version=self.version))
        if qos:
            self.in_flight.add(pid)
        return pid

    def puback(self, pids: Sequence[int]) -> None:
        """PUBACK the broker's QoS 1 messages `pids`, in this order."""
        if pids:
            self._send(wire.puback_packets(pids))

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK: the granted QoS (or failure code) per filter."""
        pid = self._next_pid()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[pid] = fut
        self._send(wire.subscribe_packet(pid, filters, self.version))
        return await fut

    def pause_reading(self) -> None:
        """Hand over no more messages (the rest of the current read waits here) and read
        nothing more from the socket until `resume_reading`."""
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._paused or self._transport is None:
            return
        self._paused = False
        self._resuming = True
        self._loop.call_soon(self._handle_held)

    def _handle_held(self) -> None:
        """After a pause: handle the bytes held back, then read the socket again."""
        self._resuming = False
        if self._transport is None or self._paused:
            return
        data, self._rest = self._rest, b""
        if data:
            self.data_received(data)
        if self._transport is not None and not self._paused:
            self._transport.resume_reading()

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then drops the will) and close."""
        if self._transport is None:
            return
        with contextlib.suppress(BrokerError):
            self._send(wire.DISCONNECT_PACKET)
            self._flush()
        self._error = BrokerError("disconnected", "")
        transport = self._transport
        if transport is not None:
            transport.close()
        with contextlib.suppress(BrokerError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 5)

    def abort(self) -> None:
        """Close at once, without DISCONNECT (the broker publishes the will)."""
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, why: str) -> None:
        log.warning("%s; reconnecting", why)
        self._error = BrokerError(why, "check the broker; the client reconnects by itself")
        if self._transport is not None:
            self._transport.abort()

    async def _keepalive(self) -> None:
        """PINGREQ when idle; give up on a broker that stays silent."""
        period = self.keepalive / 2
        while self._transport is not None:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - self._last_received > 1.5 * self.keepalive:
                self._fail(f"no answer from the broker for {now - self._last_received:.0f} s")
                return
            if now - self._last_sent >= period:
                with contextlib.suppress(BrokerError):
                    self._send(wire.PINGREQ_PACKET)


@contextlib.asynccontextmanager
async def session(endpoint: Endpoint, options: wire.ConnectOptions, on_publish: OnPublish,
                  on_puback: OnPuback | None = None, *, manual_ack: bool = False,
                  timeout: float = 10.0) -> AsyncIterator[Connection]:
    """Connect, CONNECT, and yield the connection once the broker accepted it. Leaving the
    block disconnects. Raises BrokerError when the broker cannot be reached or refuses, and
    ConfigError when TLS cannot be set up. Messages of a persistent session may reach
    `on_publish` before this yields (they can come in the same read as the CONNACK)."""
    loop = asyncio.get_running_loop()
    conn = Connection(options.version, options.keepalive, on_publish, on_puback, manual_ack)
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: conn, endpoint.host, endpoint.port, ssl=endpoint.tls,
                server_hostname=endpoint.host if endpoint.tls else None)
            conn.send_connect(options)
            ack = await conn.connack
    except TimeoutError:
        conn.abort()
        raise BrokerError(f"the broker at {where} did not answer within {timeout:g} s",
                          "check that it runs and that the address is right") from None
    except ssl.SSLError as e:
        conn.abort()
        raise BrokerError(f"TLS with the broker at {where} failed: {e.reason or e}",
                          "check the broker's certificate and $IOT_ANCHOR_BROKER_CA") from None
    except OSError as e:
        raise BrokerError(f"cannot connect to the broker at {where}: {e.strerror or e}",
                          "check that it runs and that the address is right") from None
    if ack.code:
        conn.abort()
        if ack.code in (4, 5, 0x86, 0x87):
            hint = "check the user and password in the broker URL (mqtt://USER:PASS@HOST)"
        elif ack.code in PROTOCOL_REFUSALS:
            hint = ("the broker does not speak this MQTT version"
                    + (" (MQTT 5 is needed: Mosquitto 2.0 or later)"
                       if options.version == wire.V5 else ""))
        else:
            hint = "check the broker's configuration and log"
        raise BrokerRefused(f"the broker at {where} refused the connection: {ack.reason}", hint,
                            ack.code)
    conn.accepted(ack)
    try:
        yield conn
    finally:
        await conn.disconnect()
