"""The CPython load engine behind `iot-anchor simulate --engine cpython`.

It signs the same bytes as the firmware for the same key, seq, ts, prev and data
(`gateway.wire.signer.DeviceSigner`). The engine pre-signs every device's readings before it
publishes anything, then drives the fleet over the gateway's own MQTT client
(`gateway.mqtt.client`: QoS 1, PUBACK tracking, keepalive), reconnecting with backoff.
Devices are spread round-robin over `procs` worker processes, each one asyncio loop holding
one TCP connection per device (client id = device id). Each device keeps an in-memory
outbox: a reading stays there until an anchoring ack (`anchor/<id>/ack`, a COSE_Mac0 over
CBOR {"ctr", "upto", "seqs", "entry"}, gateway/wire/downlink.py) covers it, it is published
again after `ack_wait(ack_delay, ack_timeout)` and after every reconnect, like the firmware's
flash outbox (firmware/anchor/device.py, Loop.ack_wait: the same rule). Like
the firmware, a device opens each ack with its downlink MAC key (ECDH of its key with the
gateway's downlink key, `EngineConfig.downlink_key`) and ignores one that is forged, malformed
or replayed.
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
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import AnchorError, BrokerError, ConfigError
from gateway.mqtt.client import Connection, Endpoint, session
from gateway.wire.broker_url import parse_broker_url
from gateway.wire.downlink import (
    DownlinkError,
    decode_ack_payload,
    device_key,
    open_sealed,
)
from gateway.wire.mqtt import ConnectOptions
from gateway.wire.signer import ZERO_PREV, DeviceSigner
from gateway.wire.topics import ack_topic, readings_topic


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


@dataclass
class SimDevice:
    """One simulated device of a worker: its pre-signed readings and what became of them."""

    dev: str
    msgs: list[tuple[int, bytes]]
    topic: bytes = b""
    produced: int = 0  # readings published at least once
    acked: set[int] = field(default_factory=set)
    sent_at: dict[int, float] = field(default_factory=dict)  # seq -> first publish
    last_sent: dict[int, float] = field(default_factory=dict)  # seq -> latest publish
    waiting: dict[int, None] = field(default_factory=dict)  # published, not acked: in seq order
    ack_delay: float = -1.0  # the smoothed delay of the acks in s; -1: none measured yet
    latencies: list[float] = field(default_factory=list)
    next_seq: int = 0  # after the last reading published
    prev: bytes = ZERO_PREV  # hash of the last reading published
    upto: int = -1
    republished: int = 0
    connects: int = 0
    mac_key: bytes = b""  # the downlink MAC key (mac_key_for); without one no ack is accepted
    ctrs: set[int] = field(default_factory=set)  # counters of the acks accepted
    refused_acks: int = 0

    def due(self, now: float, ack_timeout: float, reconnected: bool) -> list[int]:
        """The seqs to publish again at `now`, in order, as the firmware's Loop.publish_due
        chooses them: all that wait after a reconnect, else those not acknowledged within
        ack_wait() of their last publish. When there are such, the ack delay is raised to that
        wait, so the next one doubles."""
        if reconnected:
            return sorted(self.waiting)
        wait = ack_wait(self.ack_delay, ack_timeout)
        late = sorted(s for s in self.waiting if now - self.last_sent[s] >= wait)
        if late:
            self.ack_delay = max(self.ack_delay, wait)
        return late


ACK_SPAN = 8  # ack_wait() is at most this many times the ack timeout


def ack_wait(ack_delay: float, ack_timeout: float) -> float:
    """Seconds after a publish without an ack before a reading is published again: twice the
    smoothed ack delay, at least ack_timeout and at most ACK_SPAN times it (the firmware's
    Loop.ack_wait). A gateway that falls behind acks later, and its devices wait longer
    instead of sending it copies. A republish after this wait raises the delay to it, so the
    next wait doubles (Karn's rule: a copy's ack gives no sample, so without that the
    estimate would stay with the few acks that came in time)."""
    return min(max(2 * ack_delay, ack_timeout), ack_timeout * ACK_SPAN)


def smoothed(ack_delay: float, sample: float) -> float:
    """The smoothed ack delay after one more sample (RFC 6298's gain 1/8; the first sample as
    it is), as the firmware's Loop.on_message keeps it."""
    return sample if ack_delay < 0 else ack_delay + (sample - ack_delay) / 8


def mac_key_for(secret: bytes, dev: str, downlink_key: bytes) -> bytes:
    """The downlink MAC key of a simulated device (its 32-byte secret) under the gateway's
    65-byte downlink key, as the firmware derives it (downlink_setup.derive_key)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    priv = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), downlink_key)
    return device_key(priv.exchange(ec.ECDH(), pub), dev)


class _Conn:
    """One device's MQTT connection: pipelined QoS 1 publishes under a PUBACK window, acks in.

    Cheap per message on purpose (the engine shares the machine with the broker and the
    gateway): the packets of one event-loop step leave in one write.
    """

    def __init__(self, endpoint: Endpoint, dev: SimDevice, window: int, keepalive: int = 30):
        self.endpoint, self.d = endpoint, dev
        self.keepalive = keepalive
        self.window = window
        self.inflight: dict[int, int] = {}  # packet id -> seq
        self.room = asyncio.Event()
        self.conn: Connection | None = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the connection up (reconnect with backoff and jitter) until `stop`."""
        delay = 0.2
        options = ConnectOptions(self.d.dev, self.keepalive)
        while not stop.is_set():
            try:
                async with session(self.endpoint, options, self._on_publish,
                                   self._on_puback) as conn:
                    self.conn = conn
                    await conn.subscribe([(ack_topic(self.d.dev), 1)])
                    self.inflight.clear()
                    self.d.connects += 1
                    self.ready.set()
                    self.room.set()
                    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait({stopping, conn.closed},  # type: ignore[arg-type]
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stopping.cancel()
                    if conn.closed.done():
                        conn.closed.result()  # raises the BrokerError of the disconnect
                delay = 0.2
            except BrokerError:
                pass
            finally:
                self.ready.clear()
                self.inflight.clear()
                self.room.set()
                self.conn = None
            if stop.is_set():
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _on_publish(self, _topic: bytes, payload: bytes, _pid: int, _qos: int) -> None:
        """An anchoring ack from the gateway (the only subscription; PUBACKed by the client)."""
        self._on_ack(payload)

    def _on_puback(self, pid: int) -> None:
        if self.inflight.pop(pid, None) is not None:
            self.room.set()

    def _on_ack(self, payload: bytes) -> None:
        d = self.d
        try:
            ctr, upto, seqs, _entry = decode_ack_payload(
                open_sealed(d.mac_key, ack_topic(d.dev), payload))
            if not d.mac_key or ctr in d.ctrs:
                raise DownlinkError("replayed" if d.mac_key else "forged")
        except DownlinkError:  # refused: counted, the outbox republishes
            d.refused_acks += 1
            return
        d.ctrs.add(ctr)
        now = time.monotonic()
        covered = list(seqs)
        if upto > d.upto:
            covered += [s for s in d.waiting if s <= upto]
            d.upto = upto
        newest = -1  # the newest reading published once that this ack removes: the sample
        for s in covered:
            if s not in d.acked and s in d.sent_at:
                d.acked.add(s)
                d.waiting.pop(s, None)
                d.latencies.append(now - d.sent_at[s])
                if s > newest and d.last_sent[s] == d.sent_at[s]:
                    newest = s
        if newest >= 0:
            d.ack_delay = smoothed(d.ack_delay, now - d.sent_at[newest])

    async def send(self, items: list[tuple[int, bytes]]) -> None:
        """Publish the readings in order, at QoS 1, with at most `window` not PUBACKed.

        Returns when the last one is queued (not PUBACKed); a reading queued on a
        connection that drops is left to the republisher (the outbox).
        """
        i = 0
        while i < len(items):
            await self.ready.wait()
            conn = self.conn
            free = self.window - len(self.inflight)
            if conn is None or free <= 0:
                self.room.clear()
                await self.room.wait()
                continue
            try:
                self._write(conn, items[i : i + free])
            except BrokerError:
                await asyncio.sleep(0.05)  # the connection closed: the outbox resends
            i += free

    def send_nowait(self, item: tuple[int, bytes]) -> bool:
        """Publish one reading now if connected and the window has room; else False."""
        conn = self.conn
        if conn is None or not self.ready.is_set() or len(self.inflight) >= self.window:
            return False
        try:
            self._write(conn, [item])
        except BrokerError:
            return False
        return True

    def _write(self, conn: Connection, items: list[tuple[int, bytes]]) -> None:
        """PUBLISH packets for `items`; the bookkeeping of first publishes."""
        d = self.d
        now = time.monotonic()
        for seq, msg in items:
            first = seq not in d.sent_at
            pid = conn.publish(d.topic, msg, 1, dup=not first)
            self.inflight[pid] = seq
            if first:
                d.sent_at[seq] = now
                d.waiting[seq] = None
                d.produced += 1
                if seq >= d.next_seq:
                    d.next_seq = seq + 1
                    d.prev = hashlib.sha256(msg).digest()
            else:
                d.republished += 1
            d.last_sent[seq] = now

    async def disconnect(self) -> None:
        if self.conn is not None:
            await self.conn.disconnect()


@dataclass
class EngineConfig:
    broker: str
    interval: float = 0.0  # seconds between readings per device; 0 = as fast as possible
    duration: float = 10.0  # stop producing after this many seconds
    drain_timeout: float = 30.0
    ack_timeout: float = 10.0  # the least wait for an ack before a republish (ack_wait)
    window: int = 16  # un-PUBACKed publishes per device
    downlink_key: bytes = b""  # the gateway's downlink public key (65 bytes)


async def drive(cfg: EngineConfig, devs: list[SimDevice], go: Any) -> None:
    """Connect every device, wait for `go` (an object with `wait(timeout)`: every worker has
    signed), publish their readings (as fast as the window allows, or paced at cfg.interval),
    republish what is not acknowledged, and disconnect once all is acknowledged or
    cfg.drain_timeout has passed."""
    endpoint = Endpoint.from_url(parse_broker_url(cfg.broker))
    stop = asyncio.Event()
    conns = [_Conn(endpoint, d, cfg.window) for d in devs]
    tasks = [asyncio.create_task(c.run(stop)) for c in conns]
    for d in devs:
        d.topic = readings_topic(d.dev).encode()
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
        """The outbox: publish again what is not acknowledged after ack_wait()."""
        d = c.d
        by_seq = dict(d.msgs)
        seen_connects = d.connects
        while True:
            await asyncio.sleep(min(1.0, cfg.ack_timeout / 2))
            now = time.monotonic()
            reconnected = d.connects != seen_connects
            seen_connects = d.connects
            due = d.due(now, cfg.ack_timeout, reconnected)
            if due:
                await c.send([(seq, by_seq[seq]) for seq in due])

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
            devs.append(SimDevice(dev, presign(st, index, count), next_seq=next_seq, prev=prev,
                                  mac_key=mac_key_for(secret, dev, cfg.downlink_key)))
        sign_s = time.perf_counter() - sign_t0
        out.send({"signed": sum(len(d.msgs) for d in devs), "sign_s": sign_s})
        start = time.monotonic()
        asyncio.run(drive(cfg, devs, go))
        elapsed = time.monotonic() - start
        result = {
            "devices": {
                d.dev: {
                    "produced": d.produced,
                    "acknowledged": len(d.acked),
                    "last_seq": max(d.sent_at) if d.sent_at else None,
                    "republished": d.republished,
                    "connects": d.connects,
                    "refused_acks": d.refused_acks,
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

