"""`iot-anchor run`: the MQTT service that feeds the pipeline and acknowledges anchored readings.

Data flow (one asyncio loop, one worker thread that owns the pipeline and its SQLite handle):

    broker --PUBLISH anchor/<id>/readings (QoS 1)--> paho on_message --> inbox (list)
    processor task: inbox --submit--> Pipeline (worker thread) --commit--> CommitResult
    after the commit:  PUBACK the broker for every message of the batch (manual acks),
                       publish anchor/<id>/ack (QoS 1, CBOR {"upto", "seqs", "entry"}),
                       publish anchor/checkpoint (retained, the signed note's text).

Durability. A reading is acknowledged to its device only after the SQLite transaction that
stores it has committed. Two mechanisms keep a reading that was received but not committed
(gateway crash, power loss, storage fault) from being lost:

* The broker is PUBACKed only after the commit too. paho-mqtt 2.x acknowledges a QoS 1
  PUBLISH as soon as it is read from the socket unless the client has `manual_ack`; aiomqtt
  2.5 does not expose that option, so the service turns it on in the underlying paho client
  (`client._client.manual_ack_set(True)`) and PUBACKs itself (`_puback_all`), in the order the
  messages arrived (MQTT 3.1.1 §4.6), after the batch holding them committed. With the
  persistent session (clean_session=False and a stable client id derived from the gateway key)
  the broker redelivers every un-PUBACKed message when the gateway reconnects, and keeps
  queueing the ones that arrive while it is down. The pipeline recognises the redelivered
  copies of committed readings as duplicates and acknowledges them again.
  Cost: the broker holds each reading in flight until the batch commits, so its per-client
  in-flight limit bounds the gateway's throughput to about limit / batch interval. Mosquitto
  defaults to 20; set `max_inflight_messages 0` (no limit) for the gateway (PrivateBroker
  does). `--puback receipt` restores paho's behaviour (PUBACK on receipt) for brokers that
  cannot be configured; the device outbox then remains the only safety net.
* The device outbox: a device republishes every reading not acknowledged as anchored after
  its ack timeout and after each reconnect, so even a reading that the broker forgot is sent
  again. This is the end-to-end guarantee; the broker-side acknowledgement only makes
  recovery faster.

A message that arrived on a previous connection is not PUBACKed on a new one (packet ids are
per connection); the broker redelivers it and the pipeline counts the copy as a duplicate.

Memory bound. After an outage the broker sends the session's whole backlog at once. At most
`inbox_max` messages wait (default max(8 x batch_max, 32768)); what arrives above that is
neither taken nor PUBACKed. The service then takes nothing more until what it took is
committed and PUBACKed, and reconnects: the broker sends the rest again (`_request_resync`).

Storage faults. A failed submit or commit is logged with its reason and retried every second;
nothing is PUBACKed or acknowledged meanwhile, and the messages keep waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import resource
import signal
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as paho_client
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import AnchorError, ConfigError
from gateway.sim.loadgen import broker_auth, parse_broker_url, publish_packet, redact_url

log = logging.getLogger("iot_anchor.service")

READINGS_TOPIC = "anchor/+/readings"
CHECKPOINT_TOPIC = "anchor/checkpoint"
# The processor keeps up to AHEAD chunks of at most START_CHUNK messages with the verifiers.
# It starts a chunk once GATHER_MIN messages wait or the oldest has waited GATHER_S, so that a
# steady trickle is handled in chunks (one wake-up, one hand-off per chunk) and not one by one.
AHEAD = 3
START_CHUNK = 1024
GATHER_MIN = 256
GATHER_S = 0.01
# Acks handed to paho and not yet PUBACKed by the broker, at most. paho keeps each one (message,
# info with its own Condition, packet) until the broker's PUBACK is read, about 2.2 KB; while
# reading is paused (back-pressure, see _pause_reading) no PUBACK is read, and at 5,000 devices
# 50,000 of them piled up: 115 MB. Above the bound, acks wait in _acks_out, coalesced per
# device, so what waits is bounded by the number of devices, not by the backlog.
ACKS_INFLIGHT_MAX = 4096
ACKS_BLOCKED_POLL_S = 0.02
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

T = TypeVar("T")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB. VmHWM where Linux has it: `ru_maxrss`
    also keeps the peak of the process image before `exec`, which for a gateway started by a
    big parent (a benchmark holding 600,000 signed readings) is the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ack_topic(dev: str) -> str:
    return f"anchor/{dev}/ack"


def device_from_topic(topic: str) -> str | None:
    """anchor/<id>/readings -> <id>; None for anything else."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "anchor" and parts[2] == "readings" and parts[1]:
        return parts[1]
    return None


def _cbor_uint(major: int, n: int) -> bytes:
    """A CBOR head with the shortest argument (major 0: the unsigned integer n itself)."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


def encode_ack(upto: int | None, seqs: list[int], entry: int) -> bytes:
    """The ack payload: deterministic CBOR {"upto", "seqs", "entry"}.

    `upto` is the highest seq such that every seq <= it is anchored; when not even the
    device's first reading is anchored yet it is -1 (a CBOR negative integer). Encoded here
    rather than by cbor2 (a few microseconds per ack, and a gateway at 10,000 readings/s from
    1,000 devices sends about 2,500 acks/s); tests/integration/test_service.py checks it
    against cbor2's canonical encoding. Deterministic key order: "seqs", "upto", "entry".
    """
    up = -1 if upto is None else upto
    return b"".join((
        b"\xa3\x64seqs", _cbor_uint(0x80, len(seqs)),
        *(_cbor_uint(0, s) for s in sorted(seqs)),
        b"\x64upto", _cbor_uint(0, up) if up >= 0 else _cbor_uint(0x20, -1 - up),
        b"\x65entry", _cbor_uint(0, entry),
    ))


class _ReadAhead:
    """paho's socket, read 64 KiB at a time.

    paho reads a packet with three or more `recv` calls (1 byte of type, the length byte by
    byte, then the body), and each is a system call that also releases and re-takes the GIL,
    which the verifier threads hold much of the time. This wrapper serves those small reads
    from one large read. `pending()` (the buffered byte count; paho and aiomqtt ask SSL sockets
    the same) makes aiomqtt's reader call `loop_read` again until the buffer is empty, since
    epoll does not report bytes that are already out of the kernel.
    Measured in `make bench` (burst, 1,000 devices): 113 -> 106 us gateway CPU per reading.
    Everything else is delegated to the socket.
    """

    __slots__ = ("_sock", "_buf", "_pos", "paused")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self.paused = False  # back-pressure (GatewayService._pause_reading): read nothing

    def recv(self, n: int) -> bytes:
        if self.paused:
            raise BlockingIOError  # paho: "nothing to read now", its packet state is kept
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(65536)  # BlockingIOError / OSError go to paho as before
            if len(buf) <= n:
                self._buf, self._pos = b"", 0
                return bytes(buf)
            pos = 0
            self._buf = buf
        self._pos = pos + n
        return buf[pos:pos + n]

    def packet(self) -> tuple[int, bytes] | None:
        """The next MQTT packet as (first byte, body) if the buffer holds all of it and its
        remaining length is well formed (at most 4 bytes), else None, consuming nothing: paho's
        own byte-wise reader then reads it, from this same buffer (see `_lean_read`)."""
        if self.paused:
            return None
        buf, pos = self._buf, self._pos
        end = len(buf)
        if end - pos < 2:
            return None
        i = pos + 1
        length = buf[i]
        if length & 0x80:
            length &= 0x7F
            mult = 128
            while True:
                i += 1
                if i >= end or i > pos + 4:
                    return None  # cut at the buffer's end, or too long: paho decides
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
        start = i + 1
        stop = start + length
        if stop > end:
            return None
        self._pos = stop
        return buf[pos], buf[start:stop]

    def pending(self) -> int:
        if self.paused:
            return 0
        inner = getattr(self._sock, "pending", None)
        return max(0, len(self._buf) - self._pos) + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0  # MQTT packet types (the first byte's top half)
_PUBACK_REASON = ReasonCode(PacketTypes.PUBACK)  # "Success": an MQTT 3.1.1 PUBACK has no other
_PUBACK_PROPERTIES = Properties(PacketTypes.PUBACK)


def _lean_puback(paho: Any, ours: Callable[[int], bool] | None = None) -> None:
    """Handle the broker's PUBACKs for our acks without paho's per-packet objects.

    paho 2.x decodes every PUBACK into a new ReasonCode and Properties, even on MQTT 3.1.1
    where a PUBACK is just a packet id; with one ack per device per batch that was about a
    tenth of the event loop's time at 10,000 readings/s. A PUBACK for an ack sent by
    `_LeanAcks` goes to `ours(mid)` (which says whether it was one); otherwise this does what
    paho's handler does (report the message as published, if it is paho's) with shared
    "Success" objects, and leaves anything else (MQTT 5, PUBCOMP, a malformed packet) to paho."""
    original = paho._handle_pubackcomp  # noqa: SLF001
    if paho._protocol == MQTTProtocolVersion.MQTTv5:  # noqa: SLF001
        return

    def handle(cmd: str) -> Any:
        packet = paho._in_packet["packet"]  # noqa: SLF001
        if cmd != "PUBACK" or len(packet) != 2:
            return original(cmd)
        mid = (packet[0] << 8) | packet[1]
        if ours is not None and ours(mid):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with paho._out_message_mutex:  # noqa: SLF001
            if mid in paho._out_messages:  # noqa: SLF001
                return paho._do_on_publish(mid, _PUBACK_REASON, _PUBACK_PROPERTIES)  # noqa: SLF001
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho._handle_pubackcomp = handle  # noqa: SLF001


Publish = Callable[[int, Any], Any]  # (first byte, body) -> paho's rc, or None: not handled


def _lean_publish(paho: Any, take: Callable[[str | None, bytes, int, int], None]
                  ) -> Publish | None:
    """Hand QoS 1 PUBLISH packets (MQTT 3.1.1) to `take(topic, payload, mid, qos)` straight from
    the packet, without paho's per-message work: its MQTTMessage, a topic-filter match under a
    lock, a debug record's arguments. 6.7 -> 0.5 us per reading (measured on the packet alone);
    the readings are the gateway's main process's largest cost after the verifiers. What the
    handler does not know (MQTT 5 properties, QoS 0 and 2, a packet too short for its topic
    length, an empty topic) goes to paho's own handler, which does the same as before. The
    topic is None when it is not UTF-8 (paho raises on `message.topic` then).
    Returns the handler as `publish(first byte, body)` for `_lean_read` (None on MQTT 5): the
    rc paho's handler would return, or None when paho's handler must decide."""
    original = paho._handle_publish  # noqa: SLF001
    if paho._protocol == MQTTProtocolVersion.MQTTv5:  # noqa: SLF001
        return None

    def publish(command: int, packet: Any) -> Any:
        if command & 0x06 != 0x02 or len(packet) < 4:
            return None  # not QoS 1
        n = (packet[0] << 8) | packet[1]
        if n == 0 or len(packet) < n + 4:
            return None  # malformed: paho refuses it as it always did
        try:
            topic: str | None = packet[2:2 + n].decode()
        except UnicodeDecodeError:
            topic = None
        mid = (packet[2 + n] << 8) | packet[3 + n]
        take(topic, bytes(packet[4 + n:]), mid, 1)
        if paho._manual_ack:  # noqa: SLF001
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return paho._send_puback(mid)  # noqa: SLF001

    def handle() -> Any:
        rc = publish(paho._in_packet["command"], paho._in_packet["packet"])  # noqa: SLF001
        return original() if rc is None else rc

    paho._handle_publish = handle  # noqa: SLF001
    return publish


def _lean_read(paho: Any, publish: Publish | None = None) -> None:
    """Read the packets that `_ReadAhead` holds whole in one step each instead of paho's way:
    paho reads a packet with a `recv` per byte of its type and remaining length and one or more
    for its body, each through two wrappers, and rebuilds its packet state around them. A QoS 1
    PUBLISH goes straight to `publish` (the lean handler); anything else to paho's
    `_packet_handle`, with the packet state paho's reader would have made. One call handles
    every whole packet in the buffer (at most 64 KiB), not just one: paho's `loop_read` makes
    as many calls as it has messages in flight, and aiomqtt calls it again while the socket
    reports bytes pending, about 0.7 us a round. A packet cut at the end of the buffer, a
    malformed length, no read-ahead socket or a partly read packet: paho's reader, unchanged.
    4.6 -> 1.3 us a reading through `loop_read`, measured on 20,000."""
    original = paho._packet_read  # noqa: SLF001
    mutex = paho._msgtime_mutex  # noqa: SLF001

    def packet_read() -> Any:
        sock = paho._sock  # noqa: SLF001
        if type(sock) is not _ReadAhead or paho._in_packet["command"]:  # noqa: SLF001
            return original()
        got = sock.packet()
        if got is None:
            return original()
        while got is not None:
            command, body = got
            rc = None
            if publish is not None and command & 0xF0 == _PUBLISH:
                rc = publish(command, body)
            if rc is None:
                state = _fresh_in_packet()  # as paho's reader leaves it for handling:
                state.update(command=command, have_remaining=1, remaining_length=len(body),
                             packet=bytearray(body))
                paho._in_packet = state  # noqa: SLF001
                try:
                    rc = paho._packet_handle()  # noqa: SLF001
                except MalformedPacket:
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                paho._in_packet = _fresh_in_packet()  # noqa: SLF001
            if rc or paho._sock is not sock:  # noqa: SLF001  # an error, or the link closed
                break
            got = sock.packet()
        with mutex:
            paho._last_bytes_received = paho_client.time_func()  # noqa: SLF001
        return rc

    paho._packet_read = packet_read  # noqa: SLF001


def _fresh_in_packet() -> dict[str, Any]:
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}


# Writes are merged into one send of at most this many bytes (see _coalesce_writes).
WRITE_MAX = 1 << 18


def _coalesce_writes(paho: Any) -> None:
    """Send what paho has queued in one `send` instead of one per packet. After a commit the
    service PUBACKs every reading of the batch (up to 4,096 packets of 4 bytes) and publishes
    an ack per device; paho sends each packet with its own system call, 3.8 us of CPU a
    PUBACK on loopback TCP (measured), and the broker reads them one by one. This merges the
    queued packets into one packet of at most WRITE_MAX bytes before paho's writer runs;
    paho's writer then sends it as usual (and keeps what a partial send leaves). Packets that
    paho acts on once they are sent (a QoS 0 PUBLISH: its on_publish; a DISCONNECT) are never
    merged, and nothing is reordered."""
    original = paho._packet_write  # noqa: SLF001

    def packet_write() -> Any:
        q = paho._out_packet  # noqa: SLF001
        if len(q) > 1:
            parts = []
            size = 0
            while q and size < WRITE_MAX:
                p = q[0]
                cmd = p["command"] & 0xF0
                if cmd == _DISCONNECT or (cmd == _PUBLISH and p["qos"] == 0):
                    break
                taken = q.popleft()
                data = p["packet"][p["pos"]:] if p["pos"] else p["packet"]
                parts.append(data)
                size += len(data)
            if len(parts) == 1:
                q.appendleft(taken)  # alone: paho's packet as it was
            elif parts:
                q.appendleft({"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0,
                              "to_process": size, "packet": b"".join(parts), "info": None})
        return original()

    paho._packet_write = packet_write  # noqa: SLF001


class _LeanAcks:
    """Publishes the devices' acks (QoS 1, MQTT 3.1.1) as packets queued on paho's connection,
    without paho's per-message objects: `Client.publish` makes an MQTTMessage and an
    MQTTMessageInfo with its own threading.Condition for each, and keeps them until the PUBACK;
    with an ack per device per batch that was a sixth of the event loop's time at 10,000
    readings/s from 1,000 devices (py-spy, 21:49), and at 5,000 devices there are as many acks
    as readings. Packet ids come from paho's own counter, so they never clash with paho's
    publishes (the checkpoint) or subscriptions. `waiting` holds the ids the broker has not
    PUBACKed yet (`acked` is called by `_lean_puback`); like paho's own store, it belongs to
    one connection: an ack not PUBACKed when the connection drops is not sent again, the
    device republishes after its ack timeout and the copy is acknowledged as a duplicate."""

    __slots__ = ("paho", "waiting")

    def __init__(self, paho: Any) -> None:
        self.paho = paho
        self.waiting: set[int] = set()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue one QoS 1 PUBLISH; False when there is no connection (as paho's rc says)."""
        paho = self.paho
        if paho._sock is None:  # noqa: SLF001
            return False
        mid = paho._mid_generate()  # noqa: SLF001
        packet = publish_packet(topic.encode(), payload, mid)
        paho._packet_queue(packet[0], packet, mid, 1)  # noqa: SLF001
        self.waiting.add(mid)
        return True

    def acked(self, mid: int) -> bool:
        try:
            self.waiting.remove(mid)
        except KeyError:
            return False
        return True


def _puback_all(paho: Any, messages: Iterable[_Inbound]) -> None:
    """Acknowledge `messages` to the broker in order, as paho's `ack(mid, qos)` for each would:
    the PUBACKs of each run of QoS 1 messages are queued as one write (4 bytes each, built in
    one step), a QoS 2 message goes through `ack` (its PUBCOMP)."""
    run: list[int] = []
    for m in messages:
        if m.qos == 1:
            run.append(0x40020000 | m.mid)  # PUBACK, remaining length 2, packet id
        elif m.qos:
            _queue_pubacks(paho, run)
            run = []
            paho.ack(m.mid, m.qos)
    _queue_pubacks(paho, run)


def _queue_pubacks(paho: Any, words: list[int]) -> None:
    if words:
        paho._packet_queue(_PUBACK, struct.pack(f"!{len(words)}I", *words), 0, 1)  # noqa: SLF001


def _read_ahead(paho: Any) -> None:
    """Make the paho client wrap each new socket in `_ReadAhead`."""
    create = paho._create_socket  # noqa: SLF001

    def create_socket() -> Any:
        return _ReadAhead(create())

    paho._create_socket = create_socket  # noqa: SLF001


@dataclass
class ServiceConfig:
    data_dir: Path
    broker: str = DEFAULT_BROKER
    batch_interval: float = 1.0
    batch_max: int = 4096
    puback: str = "commit"  # "commit" (after the batch commits) or "receipt" (paho default)
    keepalive: int = 30
    backoff_min: float = 0.2
    backoff_max: float = 10.0
    inbox_max: int = 0  # messages waiting at most (0: max(8 x batch_max, 32768))


@dataclass(slots=True)
class _Inbound:
    dev: str  # from the topic; "" when it names no device
    payload: bytes
    mid: int
    qos: int
    gen: int  # connection generation the message arrived on


@dataclass
class _Stats:
    batches: int = 0
    readings: int = 0
    received: int = 0
    acks_published: int = 0
    acks_held: int = 0  # publish rounds cut short by ACKS_INFLIGHT_MAX
    inbox_peak: int = 0
    resyncs: int = 0
    pauses: int = 0


class GatewayService:
    """The `run` service. `run()` returns the process exit code (0 after a clean stop).

    `pipeline_factory` builds the pipeline; it is called in the worker thread, which also
    makes every later call on it (SQLite handles belong to the thread that opened them).

    Hot path (MQTT 3.1.1): whole packets are read from a 64 KiB read-ahead buffer
    (`_lean_read`) and each QoS 1 PUBLISH goes straight to the inbox (`_lean_publish`), so a
    reading costs no paho MQTTMessage and no aiomqtt Message, queue entry, task or future;
    aiomqtt's message iterator stays empty and only reports a disconnect. What paho queues is
    sent in one write (`_coalesce_writes`): a batch's PUBACKs (`_puback_all`) and the devices'
    acks, which are queued as packets on paho's connection (`_LeanAcks`) and not awaited. Acks
    are coalesced per device while they wait (upto = the highest, seqs = the union above it,
    entry = the newest). paho's per-packet debug logging is off unless -vv. Anything these
    do not handle (MQTT 5, QoS 0 or 2, a malformed packet) takes paho's own path.
    """

    def __init__(self, cfg: ServiceConfig, pipeline_factory: Callable[[], Any]) -> None:
        if cfg.batch_interval <= 0:
            raise ConfigError(
                f"--batch-interval {cfg.batch_interval} is not positive", "give e.g. 1"
            )
        if cfg.batch_max < 1:
            raise ConfigError(f"--batch-max {cfg.batch_max} is below 1", "give e.g. 4096")
        if cfg.puback not in ("commit", "receipt"):
            raise ConfigError(f"--puback {cfg.puback!r} is unknown", "use commit or receipt")
        self.cfg = cfg
        self.host, self.port = parse_broker_url(cfg.broker, tls_ok=True)
        self.tls = cfg.broker.startswith("mqtts://")
        self.username, self.password = broker_auth(cfg.broker)
        self.broker_shown = redact_url(cfg.broker)  # never log the password
        self._factory = pipeline_factory
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anchor-pipeline")
        self._pipeline: Any = None
        self._inbox: list[_Inbound] = []
        self._inbox_t0 = 0.0  # when the inbox last went from empty to not empty
        self._accepting = True
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._gen = 0
        self._unacked: list[_Inbound] = []  # submitted, waiting for the commit
        self._acks_out: dict[str, tuple[int, set[int], int]] = {}  # dev -> coalesced ack
        self._checkpoint_out = False
        self._published: list[Any] = []  # paho MQTTMessageInfo of the latest round
        self._lean_acks: _LeanAcks | None = None  # the current connection's ack sender
        self._out_wake = asyncio.Event()
        self._checkpoint: str | None = None
        # Memory bound: above this many waiting messages new ones are not taken (and, with
        # --puback commit, not PUBACKed); once the backlog is worked off the service reconnects
        # and the broker sends them again (see _resync).
        self._high_water = cfg.inbox_max or max(8 * cfg.batch_max, 32768)
        self._shed = 0
        self._draining = False  # taking nothing until the inbox is committed, then resync
        self._resync = False
        # Back-pressure first: at the limit the broker's socket is not read at all (see
        # _pause_reading), so the backlog stays in the broker instead of being parsed and
        # dropped; the un-PUBACKed rounds above are the fallback.
        self._paused: tuple[_ReadAhead, int, Any, tuple[Any, ...]] | None = None
        self._drained = asyncio.Event()  # the processor made its last commit
        self._final = asyncio.Event()  # ... and the publisher sent what it could
        self.stats = _Stats()
        self.client_id = ""

    # -- the worker thread ------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            self._pipeline = await self._call(self._factory)
            self.client_id = await self._call(_client_id, self._pipeline)
            self._checkpoint = await self._call(_latest_checkpoint, self._pipeline)
            self._checkpoint_out = self._checkpoint is not None
            log.info(
                "gateway %s: broker %s, batch interval %.3g s, batch max %d, PUBACK on %s",
                self.client_id, self.broker_shown, self.cfg.batch_interval, self.cfg.batch_max,
                self.cfg.puback,
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._connection_loop(), name="connection")
                    tg.create_task(self._processor(), name="processor")
                    tg.create_task(self._publisher(), name="publisher")
            except BaseExceptionGroup as group:
                # The CLI explains an AnchorError in one line; do not hide it in a group.
                for e in group.exceptions:
                    if isinstance(e, AnchorError):
                        raise e from None
                raise
            ru = resource.getrusage(resource.RUSAGE_SELF)
            st = self.stats
            log.info(
                "stopped: %d messages received, %d readings anchored in %d batches, %d acks "
                "published; CPU %.1f s user + %.1f s system, peak RSS %.0f MB; reading paused "
                "%d times, ack rounds held at the in-flight bound %d times",
                st.received, st.readings, st.batches, st.acks_published, ru.ru_utime,
                ru.ru_stime, peak_rss_mb(), st.pauses, st.acks_held,
            )
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if self._pipeline is not None:
                with contextlib.suppress(Exception):
                    await self._call(_close, self._pipeline)
            self._pool.shutdown(wait=True)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: closing the open batch")
        self._stop.set()
        self._wake.set()
        self._out_wake.set()

    # -- MQTT connection --------------------------------------------------------------------

    def _on_message(self, _client: Any, _userdata: Any, m: Any) -> None:
        """paho's on_message (a paho MQTTMessage), for what `_lean_publish` leaves to paho."""
        try:
            topic = m.topic
        except UnicodeDecodeError:  # brokers refuse such topics; never let paho see a raise
            topic = None
        self._take(topic, m.payload, m.mid, m.qos)

    def _take(self, topic: str | None, payload: bytes, mid: int, qos: int) -> None:
        """One reading from the broker, run on the event loop's thread."""
        if not self._accepting:
            return  # stopping: not PUBACKed, the broker keeps it for the next run
        if self._draining or (len(self._inbox) >= self._high_water
                              and self.cfg.puback == "commit"):
            self._shed += 1  # not PUBACKed either: the broker sends it again after _resync
            return
        # "" matches no device: rejected as topic_mismatch (a topic that is not UTF-8, or not
        # anchor/<id>/readings with a non-empty id)
        dev = "" if topic is None else device_from_topic(topic) or ""
        self._inbox.append(_Inbound(dev, payload, mid, qos, self._gen))
        self.stats.received += 1
        n = len(self._inbox)
        if n > self.stats.inbox_peak:
            self.stats.inbox_peak = n
        if n >= self._high_water and self._paused is None and self.cfg.puback == "commit":
            self._pause_reading()
        if n == 1:  # the processor starts the gather clock
            self._inbox_t0 = time.monotonic()
            self._wake.set()
        elif n == GATHER_MIN:
            self._wake.set()

    def _pause_reading(self) -> None:
        """TCP back-pressure at the inbox limit: stop reading the broker's socket until the
        inbox is below half the limit (`_resume_reading`). Nothing is dropped, so no reconnect
        is needed; the backlog waits in the broker. Measured (make bench, 600,000 readings
        offered at 10,000/s to a gateway that could not keep up): without it every round of
        dropping and reconnecting re-read the whole backlog, 636 us of CPU per reading and
        1,681 readings/s. Needs asyncio's selector loop (the reader's handle); without it the
        un-PUBACKed rounds remain."""
        client = self._client
        sock = None if client is None else getattr(client._client, "_sock", None)  # noqa: SLF001
        if not isinstance(sock, _ReadAhead):
            return
        try:
            loop = asyncio.get_running_loop()
            fd = sock.fileno()
            handle = loop._selector.get_key(fd).data[0]  # type: ignore[attr-defined]  # noqa: SLF001
            callback, args = handle._callback, handle._args  # noqa: SLF001
        except (AttributeError, KeyError, IndexError, RuntimeError, ValueError, OSError):
            return
        loop.remove_reader(fd)
        sock.paused = True
        self._paused = (sock, fd, callback, args)
        self.stats.pauses += 1

    def _resume_reading(self) -> None:
        paused, self._paused = self._paused, None
        if paused is None:
            return
        sock, fd, callback, args = paused
        sock.paused = False
        client = self._client
        if client is None or getattr(client._client, "_sock", None) is not sock:  # noqa: SLF001
            return  # that connection is gone; aiomqtt registers the next socket itself
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, callback, *args)
        loop.call_soon(callback, *args)  # bytes already read ahead raise no epoll event

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            error = "the connection ended"
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                username=self.username,
                password=self.password,
                tls_context=_tls_context() if self.tls else None,
                clean_session=False,
                keepalive=self.cfg.keepalive,
                max_inflight_messages=0,  # no limit (paho scans its list per PUBACK otherwise)
                timeout=10,
            )
            paho = client._client  # noqa: SLF001
            if self.cfg.puback == "commit":
                # aiomqtt does not expose paho's manual_ack; see the module docstring.
                paho.manual_ack_set(True)
            # The hot path: paho's own on_message instead of aiomqtt's message queue.
            paho.on_message = self._on_message
            _read_ahead(paho)
            _lean_read(paho, _lean_publish(paho, self._take))
            _coalesce_writes(paho)
            lean_acks = _LeanAcks(paho) if paho._protocol != MQTTProtocolVersion.MQTTv5 else None  # noqa: SLF001
            self._lean_acks = lean_acks
            _lean_puback(paho, lean_acks.acked if lean_acks is not None else None)
            if not logging.getLogger("mqtt").isEnabledFor(logging.DEBUG):
                paho.disable_logger()  # paho formats a debug record per packet otherwise
            # A new generation before connecting: a persistent session's backlog can arrive in
            # the same read as the CONNACK, and those messages must be PUBACKed on this
            # connection (packet ids of older connections died with them).
            self._gen += 1
            self._client = client
            self._draining = False
            try:
                async with client:
                    self._connected.set()
                    self._out_wake.set()
                    if failures:
                        log.info("reconnected to %s", self.broker_shown)
                    else:
                        log.info("connected to %s as %s", self.broker_shown, self.client_id)
                    failures = 0
                    if self._checkpoint:
                        self._checkpoint_out = True
                    await self._session(client)
            except aiomqtt.MqttError as e:
                failures += 1
                error = str(e)
            finally:
                self._connected.clear()
                self._client = None
                self._out_wake.set()
            if self._stop.is_set():
                break
            if self._resync:
                self._resync = False
                failures = 0
                continue
            delay = min(self.cfg.backoff_max, self.cfg.backoff_min * 2 ** min(failures, 16))
            delay *= 0.5 + random.random()
            if "authori" in error.lower() or "user name or password" in error.lower():
                hint = "check the user and password in the broker URL (mqtt://USER:PASS@HOST)"
            else:
                hint = "check that it runs and that --broker / $IOT_ANCHOR_BROKER points at it"
            log.warning("broker %s: %s; %s; retrying in %.1f s", self.broker_shown,
                        error.replace(self.password or "\0", "***"), hint, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Return on stop (after the final acks went out); raise MqttError on disconnect."""

        async def watch() -> None:
            # Messages bypass aiomqtt's queue (see _on_message): this ends on a disconnect.
            async for _ in client.messages:
                pass

        async def subscribe() -> None:
            # No timeout: a persistent session's backlog arrives before the SUBACK, and the
            # session keeps its subscription anyway; a disconnect ends the wait (watcher).
            granted = await client.subscribe(READINGS_TOPIC, qos=1, timeout=math.inf)
            if any(g.is_failure if hasattr(g, "is_failure") else int(g) >= 0x80
                   for g in granted):
                raise aiomqtt.MqttError(
                    f"the broker refused the subscription to {READINGS_TOPIC} (check the "
                    "gateway's ACL in the broker config)")

        watcher = asyncio.create_task(watch(), name="disconnect-watch")
        stopper = asyncio.create_task(self._stop.wait(), name="stop-wait")
        sub = asyncio.create_task(subscribe(), name="subscribe")
        tasks = {watcher, stopper, sub}
        try:
            while True:
                waiting = {watcher, stopper} | ({sub} if not sub.done() else set())
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    watcher.result()  # raises the MqttError of the disconnect
                    return
                if sub.done() and not stopper.done():
                    sub.result()  # raises if the broker refused
                    continue
                # Stop requested: let the final commit's acks go out, then disconnect.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._final.wait(), 15)
                return
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _request_resync(self) -> None:
        """Reconnect so that the broker redelivers the messages not taken (see _high_water)."""
        client = self._client
        log.info(
            "%d messages arrived while %d were waiting and were not taken; reconnecting so "
            "that the broker sends them again", self._shed, self._high_water,
        )
        self._shed = 0
        self.stats.resyncs += 1
        if client is not None:
            self._resync = True
            client._client.disconnect()  # noqa: SLF001

    # -- batching ---------------------------------------------------------------------------

    async def _processor(self) -> None:
        """Feed the pipeline; close a batch on interval, batch_max or stop; commit; ack.

        Messages go to the pipeline in two steps (`Pipeline.start`, then `finish`, see
        gateway/pipeline.py): up to AHEAD chunks are being verified by the worker processes
        while the oldest is classified and while a batch commits, so the verifiers do not wait
        for the database or for the classification. Only finished chunks belong to the open
        batch: a chunk started before a commit and finished after it goes into the next one,
        and is PUBACKed with that one."""
        cfg = self.cfg
        opened: float | None = None  # monotonic time the open batch got its first message
        submitted = 0  # messages finished since the last commit (any outcome)
        pending = 0  # readings waiting in the pipeline's open batch
        retry_at = 0.0
        inflight: deque[tuple[Any, list[_Inbound]]] = deque()  # started, not finished
        inflight_n = 0  # messages in them

        def put_back() -> None:
            """Return every started chunk to the front of the inbox, in arrival order."""
            nonlocal inflight_n
            self._inbox[:0] = [m for _, chunk in inflight for m in chunk]
            inflight.clear()
            inflight_n = 0

        def gathered() -> bool:
            """Enough waiting, or waiting long enough, to start a chunk."""
            return bool(self._inbox) and (
                len(self._inbox) >= GATHER_MIN or self._stop.is_set()
                or time.monotonic() - self._inbox_t0 >= GATHER_S)

        while True:
            now = time.monotonic()
            if retry_at > now and not self._stop.is_set():
                # backing off after a storage error: messages keep waiting in the inbox
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), retry_at - now)
            elif not inflight and not gathered() and not self._stop.is_set():
                deadlines = []
                if opened is not None:
                    deadlines.append(opened + cfg.batch_interval)
                if self._inbox:
                    deadlines.append(self._inbox_t0 + GATHER_S)
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            stopping = self._stop.is_set()
            if stopping:
                self._accepting = False
            # 1. start chunks (verification begins in the worker processes)
            ready = gathered()
            while ready and self._inbox and len(inflight) < AHEAD \
                    and time.monotonic() >= retry_at:
                room = cfg.batch_max - pending - inflight_n  # <= 0: for the next batch
                size = min(START_CHUNK, room if room > 0 else cfg.batch_max)
                chunk, self._inbox = self._inbox[:size], self._inbox[size:]
                if self._paused is not None and len(self._inbox) < self._high_water // 2:
                    self._resume_reading()
                try:
                    sub = await self._call(_start, self._pipeline, chunk)
                except AnchorError as e:
                    # The database could not be read: keep the messages (not PUBACKed) and
                    # try again; a stop gives up on them (the broker redelivers them).
                    log.error("cannot check readings, retrying in 1 s: %s", e.explain())
                    self._inbox[:0] = chunk
                    put_back()
                    retry_at = time.monotonic() + 1.0
                    break
                inflight.append((sub, chunk))
                inflight_n += len(chunk)
                if opened is None:
                    opened = time.monotonic()
            # 2. finish the oldest (all of them when there is nothing else to start)
            while inflight and time.monotonic() >= retry_at and (
                    len(inflight) >= AHEAD or not gathered() or stopping):
                sub, chunk = inflight[0]
                try:
                    pending = await self._call(_finish, self._pipeline, sub)
                except AnchorError as e:
                    log.error("cannot check readings, retrying in 1 s: %s", e.explain())
                    put_back()  # classified ones come back as duplicates of the open batch
                    retry_at = time.monotonic() + 1.0
                    break
                inflight.popleft()
                inflight_n -= len(chunk)
                self._unacked.extend(chunk)
                submitted += len(chunk)
                if pending >= cfg.batch_max or (gathered() and not stopping):
                    break  # commit first / start the next chunk first
            if stopping and retry_at > time.monotonic():
                put_back()
                self._inbox.clear()  # a stop gives up on them: the broker redelivers them
            due = opened is not None and time.monotonic() >= opened + cfg.batch_interval
            full = pending >= cfg.batch_max
            if submitted and (due or full or (stopping and not inflight)) \
                    and time.monotonic() >= retry_at:
                try:
                    await self._commit()
                    submitted = pending = 0
                    opened = time.monotonic() if inflight else None
                    retry_at = 0.0
                    # Messages were left un-PUBACKed: take nothing more, commit what was
                    # taken (so all of it is PUBACKed on this connection), then reconnect.
                    if self._shed and not stopping:
                        if self._inbox or inflight:
                            self._draining = True
                        else:
                            self._request_resync()
                except AnchorError as e:
                    # Nothing of this batch is acknowledged; try again, and keep saying why.
                    log.error("commit failed, nothing acknowledged: %s", e.explain())
                    retry_at = time.monotonic() + 1.0
                    if stopping:
                        break
                    continue
            elif not submitted and opened is not None and not inflight:
                opened = None  # everything finished was a rejection: nothing to wait for
            if stopping and not self._inbox and not inflight:
                break
            if inflight or gathered():
                self._wake.set()
        self._drained.set()
        self._out_wake.set()

    async def _commit(self) -> None:
        t0 = time.perf_counter()
        result = await self._call(_commit, self._pipeline)
        ms = (time.perf_counter() - t0) * 1000
        batch, self._unacked = self._unacked, []
        # 1. the broker: PUBACK everything of this batch, in arrival order
        client = self._client
        if self.cfg.puback == "commit" and client is not None:
            _puback_all(client._client, [m for m in batch if m.gen == self._gen])  # noqa: SLF001
        if result is None:
            return
        # 2. the devices
        for dev, (upto, seqs, entry) in _acks(result).items():
            self._merge_ack(dev, -1 if upto is None else upto, seqs, entry)
        # 3. the retained checkpoint
        text = _checkpoint_text(result)
        if text and text != self._checkpoint:
            self._checkpoint = text
            self._checkpoint_out = True
        self._out_wake.set()
        n, entry, root = _batch_figures(result)
        self.stats.batches += 1 if n else 0
        self.stats.readings += n
        log.info(
            "batch: %d readings, entry %s, root %s, commit %.1f ms (%d messages, %d acks)",
            n, "-" if entry is None else entry, root[:16] if root else "-", ms, len(batch),
            len(result.acks),
        )

    # -- outgoing acks and checkpoints ------------------------------------------------------

    def _merge_ack(self, dev: str, upto: int, seqs: Iterable[int], entry: int) -> None:
        old = self._acks_out.get(dev)
        if old is None:
            self._acks_out[dev] = (upto, set(seqs), entry)
            return
        new_upto = max(upto, old[0])
        merged = {s for s in old[1] if s > new_upto}
        merged.update(s for s in seqs if s > new_upto)
        self._acks_out[dev] = (new_upto, merged, max(entry, old[2]))

    def _publish_round(self, client: aiomqtt.Client) -> bool:
        """Hand every waiting ack and the checkpoint to paho. False if the link is down."""
        paho = client._client  # noqa: SLF001
        lean = self._lean_acks_of(paho)
        room = ACKS_INFLIGHT_MAX - self.acks_in_flight()
        infos = []
        items: list[tuple[str, tuple[int, set[int], int]]] = []
        if room <= 0:  # all wait, untouched: the publisher looks again every few ms
            self.stats.acks_held += bool(self._acks_out)
        else:
            acks, self._acks_out = self._acks_out, {}
            items = list(acks.items())
            if room < len(items):  # the rest waits, coalesced, until the broker PUBACKs
                self.stats.acks_held += 1
                for dev, ack in items[room:]:
                    self._acks_out[dev] = ack
                del items[room:]
        for k, (dev, (upto, seqs, entry)) in enumerate(items):
            payload = encode_ack(upto, list(seqs), entry)
            if lean is not None:
                sent = lean.publish(ack_topic(dev), payload)
            else:
                info = paho.publish(ack_topic(dev), payload, qos=1)
                sent = info.rc == 0
                infos.append(info)
            if not sent:
                for dev2, ack in items[k:]:
                    self._merge_ack(dev2, ack[0], ack[1], ack[2])
                return False
        self.stats.acks_published += len(items)
        if self._checkpoint_out and self._checkpoint:
            info = paho.publish(CHECKPOINT_TOPIC, self._checkpoint.encode(), qos=1, retain=True)
            if info.rc != 0:
                return False
            self._checkpoint_out = False
            infos.append(info)
        self._published = infos
        return True

    def acks_in_flight(self) -> int:
        """Acks (and other QoS 1 publishes) sent on this connection and not yet PUBACKed."""
        client = self._client
        if client is None:
            return 0
        paho = client._client  # noqa: SLF001
        lean = self._lean_acks_of(paho)
        return len(paho._out_messages) + (len(lean.waiting) if lean else 0)  # noqa: SLF001

    def _lean_acks_of(self, paho: Any) -> _LeanAcks | None:
        """The ack sender of this paho client's connection (None on MQTT 5)."""
        lean = self._lean_acks
        return lean if lean is not None and lean.paho is paho else None

    async def _publisher(self) -> None:
        """Publish acks/checkpoints while connected; the waiting ones survive reconnects."""
        while True:
            if self._acks_out and self._connected.is_set():
                # held back by ACKS_INFLIGHT_MAX: look again once PUBACKs may have come in
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._out_wake.wait(), ACKS_BLOCKED_POLL_S)
            else:
                await self._out_wake.wait()
            self._out_wake.clear()
            client = self._client
            if self._connected.is_set() and client is not None:
                self._publish_round(client)
            if self._drained.is_set():
                break
        # The last commit is done: wait (bounded) until the broker has PUBACKed our acks.
        deadline = time.monotonic() + 10
        while self._connected.is_set() and time.monotonic() < deadline:
            client = self._client
            if self._acks_out and client is not None:
                self._publish_round(client)
            if not self._acks_out and self.acks_in_flight() == 0 \
                    and all(i.is_published() for i in self._published):
                break
            await asyncio.sleep(0.02)
        if self._acks_out:
            log.warning(
                "%d acks not delivered (broker unreachable); the devices will republish and "
                "be acknowledged (as duplicates) next time", len(self._acks_out),
            )
        self._final.set()


# -- the pipeline interface (gateway/pipeline.py), kept in one place -------------------------
# The stand-in pipeline in tests/integration/test_service.py implements the same surface.


def _client_id(pipeline: Any) -> str:
    """A stable MQTT client id: "iot-anchor-gw-<gateway key id>" (16 hex digits)."""
    key_id = getattr(pipeline, "key_id", None)
    if key_id is None:
        from gateway.ledger import note

        key_id = note.gateway_key_id(pipeline.signer)
    return f"iot-anchor-gw-{key_id}"


def _latest_checkpoint(pipeline: Any) -> str | None:
    store = getattr(pipeline, "store", None)
    if store is None:
        return None
    latest = store.latest_checkpoint()
    return latest[1] if latest else None


def _start(pipeline: Any, chunk: list[_Inbound]) -> Any:
    """Hand a chunk to the pipeline's verifiers. Outcomes are counted by the pipeline and
    stored at the commit."""
    return pipeline.start([(m.payload, m.dev) for m in chunk])


def _finish(pipeline: Any, submission: Any) -> int:
    """Classify a started chunk into the open batch; the open batch's size after it."""
    pipeline.finish(submission)
    return int(pipeline.pending())


def _commit(pipeline: Any) -> Any:
    return pipeline.commit()


def _close(pipeline: Any) -> None:
    close = getattr(pipeline, "close", None)
    if close is not None:
        close()
    store = getattr(pipeline, "store", None)
    if store is not None:
        store.close()


def _acks(result: Any) -> dict[str, tuple[int | None, list[int], int]]:
    return {dev: (a.upto, list(a.seqs), a.entry) for dev, a in result.acks.items()}


def _checkpoint_text(result: Any) -> str | None:
    return result.checkpoint


def _batch_figures(result: Any) -> tuple[int, Any, str]:
    root = result.root.hex() if isinstance(result.root, bytes) else ""
    return int(result.readings), result.entry, root


def _tls_context() -> ssl.SSLContext:
    """mqtts://: verify the broker against the system CAs, or $IOT_ANCHOR_BROKER_CA."""
    cafile = os.environ.get("IOT_ANCHOR_BROKER_CA") or None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the broker CA certificate {cafile}: {e}",
                          "set IOT_ANCHOR_BROKER_CA to a readable PEM file") from e


# The interpreter's GIL switch interval for `run` (CPython's default is 5 ms). The event loop
# (paho's parsing) and the pipeline thread (classify, SQLite, which lets the GIL go at every
# row) both want the GIL; with 5 ms a commit waited up to 5 ms each time it got it back.
# make bench, 1,000 devices offered 11,000 readings/s for 30 s, quiet machine: 5 ms anchored
# 10,615/s with p99 2,070 ms (falling behind); 0.5 ms 10,867/s with p99 1,007 ms.
SWITCH_INTERVAL_S = 0.0005


def run_service(cfg: ServiceConfig, pipeline_factory: Callable[[], Any]) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(GatewayService(cfg, pipeline_factory).run())
