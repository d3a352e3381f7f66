"""The CPython load engine behind `iot-anchor simulate --engine cpython`.

It makes the same bytes as the firmware for the same key, seq, ts, prev and data: a
COSE_Sign1 (tag 18, ES256) over a deterministically encoded Reading (RFC 8949 §4.2.1:
shortest integer and length forms, map keys sorted bytewise by their encoding, floats in
the shortest of half/single/double precision that keeps the value exactly), signed with
RFC 6979 deterministic ECDSA (`cryptography`'s `deterministic_signing=True`) and
normalised to low-S. tests/unit/test_loadgen.py checks this byte for byte against the
firmware's `sign` command.

The engine pre-signs every device's readings before it publishes anything, then drives
the fleet over a small MQTT 3.1.1 client of its own (QoS 1, PUBACK tracking, keepalive,
reconnect): paho costs far more CPU per message than the engine can spare at fleet scale.
Devices are spread round-robin over `procs` worker processes, each one asyncio loop holding
one TCP connection per device (client id = device id). Each device keeps an in-memory
outbox: a reading stays there until an anchoring ack (`anchor/<id>/ack`, CBOR
{"upto", "seqs", "entry"}) covers it, it is published again after `ack_timeout` and after
every reconnect, like the firmware's flash outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import json
import math
import multiprocessing
import os
import random
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.errors import AnchorError, ConfigError

# P-256 group order.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ZERO_PREV = bytes(32)
COSE_TAG = 18
ALG_ES256 = -7


# --------------------------------------------------------------------------- CBOR


def _head(major: int, n: int, out: bytearray) -> None:
    """Append a CBOR head (major type, argument) in its shortest form."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(mt | 26)
        out += n.to_bytes(4, "big")
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out += n.to_bytes(8, "big")
    else:
        raise ValueError(f"integer {n} does not fit in 64 bits")


def _float(x: float, out: bytearray) -> None:
    """Shortest exact float (RFC 8949 §4.2.2 preferred serialisation)."""
    if math.isnan(x):
        out += b"\xf9\x7e\x00"
        return
    try:
        half = struct.pack(">e", x)
        if struct.unpack(">e", half)[0] == x:
            out.append(0xF9)
            out += half
            return
    except OverflowError:
        pass
    try:
        single = struct.pack(">f", x)
        if struct.unpack(">f", single)[0] == x:
            out.append(0xFA)
            out += single
            return
    except OverflowError:
        pass
    out.append(0xFB)
    out += struct.pack(">d", x)


def _encode(obj: Any, out: bytearray) -> None:
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(0, obj, out)
        else:
            _head(1, -1 - obj, out)
    elif isinstance(obj, float):
        _float(obj, out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        _head(2, len(b), out)
        out += b
    elif isinstance(obj, str):
        b = obj.encode()
        _head(3, len(b), out)
        out += b
    elif isinstance(obj, (list, tuple)):
        _head(4, len(obj), out)
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            key_buf = bytearray()
            _encode(k, key_buf)
            items.append((bytes(key_buf), v))
        items.sort(key=lambda kv: kv[0])
        _head(5, len(items), out)
        for key_bytes, v in items:
            out += key_bytes
            _encode(v, out)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")


def cbor_encode(obj: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2.1) of ints, floats, str, bytes, lists and maps."""
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


# --------------------------------------------------------------------------- COSE


def protected_header(kid: str) -> bytes:
    return cbor_encode({1: ALG_ES256, 4: kid.encode()})


def reading_payload(
    dev: str, seq: int, prev: bytes, data: Mapping[str, int | float], ts: int | None = None
) -> bytes:
    reading: dict[str, Any] = {"v": 1, "dev": dev, "seq": seq, "prev": prev, "data": dict(data)}
    if ts is not None:
        reading["ts"] = ts
    return cbor_encode(reading)


class DeviceSigner:
    """A device's P-256 key; signs readings exactly like the firmware."""

    def __init__(self, dev: str, secret: bytes) -> None:
        if len(secret) != 32:
            raise ConfigError(
                f"device secret for {dev} is {len(secret)} bytes", "give a 32-byte P-256 secret"
            )
        self.dev = dev
        self.secret = secret
        self._key = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
        self._protected = protected_header(dev)
        self._algo = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    @classmethod
    def generate(cls, dev: str) -> DeviceSigner:
        while True:
            secret = os.urandom(32)
            if 0 < int.from_bytes(secret, "big") < P256_N:
                return cls(dev, secret)

    @property
    def public_key(self) -> bytes:
        """65-byte uncompressed SEC1 point, as the firmware's keygen prints it (in hex)."""
        nums = self._key.public_key().public_numbers()
        return b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")

    def sign_payload(self, payload: bytes) -> bytes:
        """The whole tagged COSE_Sign1 message for a given payload."""
        tbs = cbor_encode(["Signature1", self._protected, b"", payload])
        r, s = decode_dss_signature(self._key.sign(tbs, self._algo))
        if s > P256_N // 2:
            s = P256_N - s
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        out = bytearray(b"\xd2\x84")  # tag 18, array of 4
        _head(2, len(self._protected), out)
        out += self._protected
        out.append(0xA0)  # unprotected: {}
        _head(2, len(payload), out)
        out += payload
        out += b"\x58\x40"
        out += sig
        return bytes(out)

    def sign(
        self, seq: int, prev: bytes, data: Mapping[str, int | float], ts: int | None = None
    ) -> bytes:
        return self.sign_payload(reading_payload(self.dev, seq, prev, data, ts))


def sensor_data(dev_index: int, seq: int) -> dict[str, int | float]:
    """A plausible, deterministic reading for simulated device `dev_index` at `seq`."""
    temp = 21.0 + 4.0 * math.sin((seq + 7 * dev_index) / 30.0)
    return {"temp": round(temp, 2), "rh": 40 + (seq * 7 + dev_index) % 20}


# --------------------------------------------------------------------------- fleet state


@dataclass
class DeviceState:
    """What the engine keeps about one simulated device between runs (a JSON file)."""

    dev: str
    secret: bytes
    next_seq: int = 0
    prev: bytes = ZERO_PREV

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.dev, "secret": self.secret.hex(), "next_seq": self.next_seq,
             "prev": self.prev.hex()}
        )

    @classmethod
    def from_json(cls, text: str) -> DeviceState:
        d = json.loads(text)
        return cls(d["id"], bytes.fromhex(d["secret"]), int(d["next_seq"]),
                   bytes.fromhex(d["prev"]))


def load_or_create_states(fleet_dir: Path, ids: Iterable[str]) -> list[DeviceState]:
    fleet_dir.mkdir(parents=True, exist_ok=True)
    states = []
    for dev in ids:
        path = fleet_dir / f"{dev}.json"
        if path.exists():
            try:
                states.append(DeviceState.from_json(path.read_text()))
            except (ValueError, KeyError) as e:
                raise ConfigError(
                    f"simulated device state {path} is unreadable ({e})",
                    "delete the file (and use a fresh --data) or choose another --fleet-dir",
                ) from e
        else:
            st = DeviceState(dev, DeviceSigner.generate(dev).secret)
            _write_state(path, st)
            states.append(st)
    return states


def _write_state(path: Path, st: DeviceState) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(st.to_json())
    os.replace(tmp, path)


def save_states(fleet_dir: Path, states: Iterable[DeviceState]) -> None:
    for st in states:
        _write_state(fleet_dir / f"{st.dev}.json", st)


def presign(state: DeviceState, dev_index: int, count: int) -> list[tuple[int, bytes]]:
    """Sign `count` readings from the device's next seq on; advances `state`."""
    signer = DeviceSigner(state.dev, state.secret)
    out = []
    ts = int(time.time())
    for _ in range(count):
        seq = state.next_seq
        msg = signer.sign(seq, state.prev, sensor_data(dev_index, seq), ts)
        out.append((seq, msg))
        state.prev = hashlib.sha256(msg).digest()
        state.next_seq = seq + 1
    return out


# --------------------------------------------------------------------------- MQTT


def parse_broker_url(url: str, tls_ok: bool = False) -> tuple[str, int]:
    """mqtt://HOST:PORT -> (host, port); with `tls_ok`, also mqtts://HOST:PORT (port 8883
    by default). The load engine speaks plain MQTT over TCP only."""
    parts = urlsplit(url)
    if parts.scheme == "mqtts" and tls_ok and parts.hostname:
        try:
            return parts.hostname, parts.port or 8883
        except ValueError as e:
            raise ConfigError(f"broker URL {redact_url(url)!r} has a bad port",
                              "use a number 1-65535") from e
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(
            f"broker URL {redact_url(url)!r} is not of the form mqtt://[USER:PASSWORD@]HOST[:PORT]",
            "give e.g. --broker mqtt://127.0.0.1:1883",
        )
    try:
        port = parts.port or 1883
    except ValueError as e:
        raise ConfigError(f"broker URL {redact_url(url)!r} has a bad port",
                          "use a number 1-65535") from e
    return parts.hostname, port


def broker_auth(url: str) -> tuple[str | None, str | None]:
    """The user and password of mqtt://USER:PASSWORD@HOST:PORT (percent-decoded), or Nones."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return user, password


def redact_url(url: str) -> str:
    """The URL for logs and messages: the password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keepalive: int, clean: bool = True) -> bytes:
    var = _str("MQTT") + bytes([4, 0x02 if clean else 0]) + keepalive.to_bytes(2, "big")
    body = var + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, pid: int, dup: bool = False) -> bytes:
    body_len = 2 + len(topic) + 2 + len(payload)
    return (
        bytes([0x3A if dup else 0x32]) + _varint(body_len) + _str(topic)
        + pid.to_bytes(2, "big") + payload
    )


def subscribe_packet(topic: str, pid: int, qos: int = 1) -> bytes:
    body = pid.to_bytes(2, "big") + _str(topic) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


def decode_ack(payload: bytes) -> tuple[int, list[int], int]:
    """An anchoring ack {"upto", "seqs", "entry"} -> (upto, seqs, entry); upto -1 = none."""
    d = cbor2.loads(payload)
    if not isinstance(d, dict):
        raise ValueError("ack is not a map")
    upto = d.get("upto")
    seqs = d.get("seqs") or []
    return (-1 if upto is None else int(upto)), [int(s) for s in seqs], int(d.get("entry", -1))


@dataclass
class _Dev:
    dev: str
    msgs: list[tuple[int, bytes]]
    topic: bytes = b""
    produced: int = 0  # readings published at least once
    acked: set[int] = field(default_factory=set)
    sent_at: dict[int, float] = field(default_factory=dict)  # seq -> first publish
    last_sent: dict[int, float] = field(default_factory=dict)  # seq -> latest publish
    latencies: list[float] = field(default_factory=list)
    next_seq: int = 0  # after the last reading published
    prev: bytes = ZERO_PREV  # hash of the last reading published
    upto: int = -1
    republished: int = 0
    connects: int = 0


class _Conn:
    """One device's MQTT connection: pipelined QoS 1 publishes under a PUBACK window, acks in.

    Cheap per message on purpose (the engine shares the machine with the broker and the
    gateway): packets for as many readings as the window allows go out in one write, and the
    reader parses whole chunks of the socket.
    """

    def __init__(self, host: str, port: int, dev: _Dev, window: int, keepalive: int = 30):
        self.host, self.port, self.d = host, port, dev
        self.keepalive = keepalive
        self.window = window
        self.inflight: dict[int, int] = {}  # packet id -> seq
        self.room = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self._pid = 0

    def _next_pid(self) -> int:
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.inflight:
                return self._pid
        raise RuntimeError("no free packet id")

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connection up (reconnect with backoff and jitter) until `stop`."""
        delay = 0.2
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = 0.2
            except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                pass
            finally:
                self.ready.clear()
                self.inflight.clear()
                self.room.set()
                if self.writer is not None:
                    self.writer.close()
                    self.writer = None
            if stop.is_set():
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    async def _session(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.writer = writer
        writer.write(connect_packet(self.d.dev, self.keepalive))
        await writer.drain()
        first = await asyncio.wait_for(reader.readexactly(4), 10)
        if first[0] != 0x20 or first[3] != 0:
            raise ConnectionError(f"CONNACK refused: {first.hex()}")
        writer.write(subscribe_packet(f"anchor/{self.d.dev}/ack", self._next_pid()))
        self.inflight.clear()
        self.d.connects += 1
        self.ready.set()
        self.room.set()
        pinger = asyncio.create_task(self._pinger(writer))
        try:
            await self._read_loop(reader, writer, stop)
        finally:
            pinger.cancel()

    async def _pinger(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            writer.write(b"\xc0\x00")

    async def _read_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event
    ) -> None:
        buf = bytearray()
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
            pos, n = 0, len(buf)
            freed = False
            while pos + 2 <= n:
                # fixed header: type byte, remaining length (1-4 bytes)
                length, mult, i = 0, 1, pos + 1
                while i < n:
                    b = buf[i]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                else:
                    break  # the length is not complete yet
                if i + length > n:
                    break
                kind = buf[pos] >> 4
                body = bytes(buf[i : i + length])
                if kind == 4:  # PUBACK
                    if self.inflight.pop(int.from_bytes(body[:2], "big"), None) is not None:
                        freed = True
                elif kind == 3:  # PUBLISH: an anchoring ack from the gateway
                    tl = int.from_bytes(body[:2], "big")
                    p = 2 + tl
                    if (buf[pos] >> 1) & 3:
                        writer.write(b"\x40\x02" + body[p : p + 2])
                        p += 2
                    self._on_ack(body[p:])
                pos = i + length
            del buf[:pos]
            if freed:
                self.room.set()

    def _on_ack(self, payload: bytes) -> None:
        try:
            upto, seqs, _entry = decode_ack(payload)
        except Exception:  # noqa: BLE001 - a bad ack is ignored, the outbox republishes
            return
        now = time.monotonic()
        d = self.d
        covered = list(seqs)
        if upto > d.upto:
            covered += [s for s in d.sent_at if d.upto < s <= upto]
            d.upto = upto
        for s in covered:
            if s not in d.acked and s in d.sent_at:
                d.acked.add(s)
                d.latencies.append(now - d.sent_at[s])

    async def send(self, items: list[tuple[int, bytes]]) -> None:
        """Publish the readings in order, at QoS 1, with at most `window` not PUBACKed.

        Returns when the last one is written (not PUBACKed); a reading written on a
        connection that drops is left to the republisher (the outbox).
        """
        i = 0
        while i < len(items):
            await self.ready.wait()
            writer = self.writer
            free = self.window - len(self.inflight)
            if writer is None or free <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            self._write(writer, items[i : i + free])
            i += free
            try:
                await writer.drain()
            except (OSError, ConnectionError):
                await asyncio.sleep(0.05)

    def send_nowait(self, item: tuple[int, bytes]) -> bool:
        """Publish one reading now if connected and the window has room; else False."""
        writer = self.writer
        if writer is None or not self.ready.is_set() or len(self.inflight) >= self.window:
            return False
        self._write(writer, [item])
        return True

    def _write(self, writer: asyncio.StreamWriter, items: list[tuple[int, bytes]]) -> None:
        """One write of PUBLISH packets for `items`; the bookkeeping of first publishes."""
        d = self.d
        out = bytearray()
        now = time.monotonic()
        for seq, msg in items:
            pid = self._next_pid()
            self.inflight[pid] = seq
            first = seq not in d.sent_at
            if first:
                d.sent_at[seq] = now
                d.produced += 1
                if seq >= d.next_seq:
                    d.next_seq = seq + 1
                    d.prev = hashlib.sha256(msg).digest()
            else:
                d.republished += 1
            d.last_sent[seq] = now
            out += publish_packet(d.topic, msg, pid, dup=not first)
        writer.write(out)

    async def disconnect(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError, ConnectionError):
                self.writer.write(b"\xe0\x00")
                await self.writer.drain()


@dataclass
class EngineConfig:
    broker: str
    interval: float = 0.0  # seconds between readings per device; 0 = as fast as possible
    duration: float = 10.0  # stop producing after this many seconds
    drain_timeout: float = 30.0
    ack_timeout: float = 10.0  # republish a reading not acknowledged after this long
    window: int = 16  # un-PUBACKed publishes per device


async def _drive(cfg: EngineConfig, devs: list[_Dev], go: Any) -> None:
    host, port = parse_broker_url(cfg.broker)
    stop = asyncio.Event()
    conns = [_Conn(host, port, d, cfg.window) for d in devs]
    tasks = [asyncio.create_task(c.run(stop)) for c in conns]
    for d in devs:
        d.topic = f"anchor/{d.dev}/readings".encode()
    # Wait for the connections (bounded), then for the common start time.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in conns)), 30)
    # Every worker has signed: start together (`go` is a multiprocessing Event).
    await asyncio.get_running_loop().run_in_executor(None, go.wait, 120)
    t0 = time.monotonic()
    produce_until = t0 + cfg.duration

    async def produce(c: _Conn) -> None:
        await c.send(c.d.msgs)  # as fast as the window and the CPU allow

    async def paced() -> None:
        """Every device publishes one reading per interval, at its own random phase.

        One scheduler for the whole share instead of a coroutine per device: the readings
        due within the next millisecond go out in one pass, and a device whose connection is
        down or whose window is full gets its readings queued, in order, on a task of its own.
        """
        backlog: dict[int, list[tuple[int, bytes]]] = {}
        drainers: dict[int, asyncio.Task[None]] = {}

        async def drain(k: int) -> None:
            while backlog.get(k):
                items = backlog.pop(k)
                await conns[k].send(items)

        heap = [(t0 + random.random() * cfg.interval, k, 0)
                for k, c in enumerate(conns) if c.d.msgs]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            due = heap[0][0]
            if due > now + 0.001:
                await asyncio.sleep(due - now)
                continue
            while heap and heap[0][0] <= now + 0.001:
                due, k, i = heapq.heappop(heap)
                if due >= produce_until:
                    continue
                c = conns[k]
                item = c.d.msgs[i]
                if k in backlog or not c.send_nowait(item):
                    backlog.setdefault(k, []).append(item)
                    if k not in drainers or drainers[k].done():
                        drainers[k] = asyncio.create_task(drain(k))
                if i + 1 < len(c.d.msgs):
                    heapq.heappush(heap, (due + cfg.interval, k, i + 1))
            await asyncio.sleep(0)
        await asyncio.gather(*drainers.values())

    async def republisher(c: _Conn) -> None:
        """The outbox: publish again what is not acknowledged after ack_timeout."""
        d = c.d
        by_seq = dict(d.msgs)
        seen_connects = d.connects
        while True:
            await asyncio.sleep(min(1.0, cfg.ack_timeout / 2))
            now = time.monotonic()
            reconnected = d.connects != seen_connects
            seen_connects = d.connects
            due = [(seq, by_seq[seq]) for seq in sorted(d.sent_at)
                   if seq not in d.acked
                   and (reconnected or now - d.last_sent[seq] >= cfg.ack_timeout)]
            if due:
                await c.send(due)

    repubs = [asyncio.create_task(republisher(c)) for c in conns]
    if cfg.interval > 0:
        await paced()
    else:
        await asyncio.gather(*(produce(c) for c in conns))
    drain_until = time.monotonic() + cfg.drain_timeout
    while time.monotonic() < drain_until:
        if all(len(d.acked) >= d.produced for d in devs):
            break
        await asyncio.sleep(0.05)
    for t in repubs:
        t.cancel()
    # Let the broker PUBACK what is still in flight (bounded), so that everything counted as
    # produced has reached it even with --drain-timeout 0; then disconnect cleanly.
    settle_until = time.monotonic() + 5.0
    while any(c.inflight for c in conns) and time.monotonic() < settle_until:
        await asyncio.sleep(0.02)
    for c in conns:
        await c.disconnect()
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, *repubs, return_exceptions=True)


def _worker(
    cfg: EngineConfig, specs: list[tuple[str, bytes, int, bytes, int, int]], go: Any,
    out: Any,
) -> None:
    """One worker process: pre-sign, then drive its share of the fleet; send results."""
    try:
        devs = []
        sign_t0 = time.perf_counter()
        for dev, secret, next_seq, prev, index, count in specs:
            st = DeviceState(dev, secret, next_seq, prev)
            devs.append(_Dev(dev, presign(st, index, count), next_seq=next_seq, prev=prev))
        sign_s = time.perf_counter() - sign_t0
        out.send({"signed": sum(len(d.msgs) for d in devs), "sign_s": sign_s})
        start = time.monotonic()
        asyncio.run(_drive(cfg, devs, go))
        elapsed = time.monotonic() - start
        result = {
            "devices": {
                d.dev: {
                    "produced": d.produced,
                    "acknowledged": len(d.acked),
                    "last_seq": max(d.sent_at) if d.sent_at else None,
                    "republished": d.republished,
                    "connects": d.connects,
                    "next_seq": d.next_seq,
                    "prev": d.prev.hex(),
                }
                for d in devs
            },
            "latencies": [x for d in devs for x in d.latencies],
            "first_publish": min((min(d.sent_at.values()) for d in devs if d.sent_at),
                                 default=None),
            "last_publish": max((max(d.sent_at.values()) for d in devs if d.sent_at),
                                default=None),
            "elapsed": elapsed,
        }
        out.send(result)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        out.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        out.close()


@dataclass
class EngineResult:
    devices: dict[str, dict[str, Any]]
    latencies_ms: list[float]
    publish_s: float
    sign_s: float
    signed: int
    procs: int

    @property
    def produced(self) -> int:
        return sum(d["produced"] for d in self.devices.values())

    @property
    def acknowledged(self) -> int:
        return sum(d["acknowledged"] for d in self.devices.values())

    def percentile(self, p: float) -> float | None:
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def run_engine(
    cfg: EngineConfig, states: list[DeviceState], counts: list[int], procs: int
) -> EngineResult:
    """Pre-sign and publish `counts[i]` readings for each device, over `procs` processes.

    The devices' states (next seq, prev) are advanced for what was signed, published or
    not, so a later run never reuses a seq. Raises AnchorError when a worker fails.
    """
    procs = max(1, min(procs, len(states)))
    ctx = multiprocessing.get_context("spawn")
    shares: list[list[tuple[str, bytes, int, bytes, int, int]]] = [[] for _ in range(procs)]
    for i, (st, n) in enumerate(zip(states, counts, strict=True)):
        shares[i % procs].append((st.dev, st.secret, st.next_seq, st.prev, i, n))
    go = ctx.Event()  # set once every worker has pre-signed its share
    pipes, workers = [], []
    for share in shares:
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(cfg, share, go, tx), daemon=True)
        p.start()
        tx.close()
        pipes.append(rx)
        workers.append(p)
    results, signed, sign_s = [], 0, 0.0
    finished = False
    try:
        for rx in pipes:
            first = rx.recv()
            if "error" in first:
                raise AnchorError(f"load worker failed: {first['error']}",
                                  "check the broker URL and the machine's limits (ulimit -n)")
            signed += first["signed"]
            sign_s = max(sign_s, first["sign_s"])
        go.set()
        for rx in pipes:
            res = rx.recv()
            if "error" in res:
                raise AnchorError(f"load worker failed: {res['error']}",
                                  "check the broker URL and the machine's limits (ulimit -n)")
            results.append(res)
        finished = True
    except EOFError as e:
        raise AnchorError("a load worker process died",
                          "run again with fewer devices or look at the machine's memory") from e
    finally:
        for p in workers:
            p.join(5 if finished else 0)
            if p.is_alive():
                p.kill()
                p.join()
    devices: dict[str, dict[str, Any]] = {}
    lat: list[float] = []
    for r in results:
        devices.update(r["devices"])
        lat += [x * 1000 for x in r["latencies"]]
    firsts = [r["first_publish"] for r in results if r["first_publish"] is not None]
    lasts = [r["last_publish"] for r in results if r["last_publish"] is not None]
    # monotonic clocks of different processes share the system's CLOCK_MONOTONIC on Linux
    publish_s = (max(lasts) - min(firsts)) if firsts else 0.0
    ordered = {}
    for st in states:
        info = devices[st.dev]
        # Continue after the last reading that went out; unpublished ones are signed anew.
        st.next_seq, st.prev = info.pop("next_seq"), bytes.fromhex(info.pop("prev"))
        ordered[st.dev] = info
    return EngineResult(ordered, lat, publish_s, sign_s, signed, procs)

