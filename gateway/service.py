"""`iot-anchor run`: the MQTT service that feeds the pipeline and acknowledges anchored readings.

Data flow (one asyncio loop, one worker thread that owns the pipeline and its SQLite handle):

    broker --PUBLISH anchor/<id>/readings (QoS 1)--> receiver task --> inbox (list)
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
  (`client._client.manual_ack_set(True)`) and calls `ack(mid, qos)` itself, in the order the
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import cbor2

from gateway.errors import AnchorError, ConfigError
from gateway.loadgen import parse_broker_url

log = logging.getLogger("iot_anchor.service")

READINGS_TOPIC = "anchor/+/readings"
CHECKPOINT_TOPIC = "anchor/checkpoint"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"

T = TypeVar("T")


def ack_topic(dev: str) -> str:
    return f"anchor/{dev}/ack"


def device_from_topic(topic: str) -> str | None:
    """anchor/<id>/readings -> <id>; None for anything else."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "anchor" and parts[2] == "readings" and parts[1]:
        return parts[1]
    return None


def encode_ack(upto: int | None, seqs: list[int], entry: int) -> bytes:
    """The ack payload: deterministic CBOR {"upto", "seqs", "entry"}.

    `upto` is the highest seq such that every seq <= it is anchored; when not even the
    device's first reading is anchored yet it is -1 (a CBOR negative integer).
    """
    return cbor2.dumps(
        {"upto": -1 if upto is None else upto, "seqs": sorted(seqs), "entry": entry},
        canonical=True,
    )


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


@dataclass
class _Inbound:
    dev: str | None  # from the topic
    payload: bytes
    mid: int
    qos: int
    gen: int  # connection generation the message arrived on


@dataclass
class _Stats:
    batches: int = 0
    readings: int = 0
    received: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class GatewayService:
    """The `run` service. `run()` returns the process exit code (0 after a clean stop).

    `pipeline_factory` builds the pipeline; it is called in the worker thread, which also
    makes every later call on it (SQLite handles belong to the thread that opened them).
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
        self.host, self.port = parse_broker_url(cfg.broker)
        self._factory = pipeline_factory
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anchor-pipeline")
        self._pipeline: Any = None
        self._inbox: list[_Inbound] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._gen = 0
        self._unacked: deque[_Inbound] = deque()  # submitted, waiting for the commit
        self._outgoing: deque[tuple[str, bytes, bool]] = deque()  # acks, checkpoint
        self._out_wake = asyncio.Event()
        self._checkpoint: str | None = None
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
            log.info(
                "gateway %s: broker %s, batch interval %.3g s, batch max %d, PUBACK on %s",
                self.client_id, self.cfg.broker, self.cfg.batch_interval, self.cfg.batch_max,
                self.cfg.puback,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection_loop(), name="connection")
                tg.create_task(self._processor(), name="processor")
                tg.create_task(self._publisher(), name="publisher")
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

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            client = aiomqtt.Client(
                self.host,
                self.port,
                identifier=self.client_id,
                clean_session=False,
                keepalive=self.cfg.keepalive,
                max_inflight_messages=1000,
                timeout=10,
            )
            if self.cfg.puback == "commit":
                # aiomqtt does not expose paho's manual_ack; see the module docstring.
                client._client.manual_ack_set(True)  # noqa: SLF001
            try:
                async with client:
                    self._gen += 1  # older messages' packet ids died with the old connection
                    await client.subscribe(READINGS_TOPIC, qos=1)
                    self._client = client
                    self._connected.set()
                    self._out_wake.set()
                    if failures:
                        log.info("reconnected to %s", self.cfg.broker)
                    else:
                        log.info("connected to %s as %s", self.cfg.broker, self.client_id)
                    failures = 0
                    if self._checkpoint:
                        self._queue_out(CHECKPOINT_TOPIC, self._checkpoint.encode(), True)
                    await self._receive(client)
                    # Stop requested: let the final commit's acks go out, then disconnect.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._final.wait(), 15)
            except aiomqtt.MqttError as e:
                failures += 1
                log.warning("broker %s: %s", self.cfg.broker, e)
            finally:
                self._connected.clear()
                self._client = None
                self._out_wake.set()
            if self._stop.is_set():
                break
            delay = min(self.cfg.backoff_max, self.cfg.backoff_min * 2 ** min(failures, 16))
            delay *= 0.5 + random.random()
            log.info("reconnecting in %.1f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _receive(self, client: aiomqtt.Client) -> None:
        gen = self._gen
        stop_wait = asyncio.ensure_future(self._stop.wait())
        try:
            it = client.messages.__aiter__()
            while not self._stop.is_set():
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait(
                    {nxt, stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await nxt
                    break
                msg = nxt.result()
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                self._inbox.append(
                    _Inbound(device_from_topic(msg.topic.value), payload, msg.mid, msg.qos, gen)
                )
                self.stats.received += 1
                self._wake.set()
        finally:
            stop_wait.cancel()

    # -- batching ---------------------------------------------------------------------------

    async def _processor(self) -> None:
        """Feed the pipeline; close a batch on interval, batch_max or stop; commit; ack."""
        cfg = self.cfg
        opened: float | None = None  # monotonic time the open batch got its first message
        submitted = 0  # messages submitted since the last commit (any outcome)
        pending = 0  # readings waiting in the pipeline's open batch
        retry_at = 0.0
        while True:
            timeout = None
            if opened is not None:
                timeout = max(0.0, opened + cfg.batch_interval - time.monotonic())
            if not self._inbox and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            stopping = self._stop.is_set()
            if self._inbox:
                room = cfg.batch_max - pending
                chunk, self._inbox = self._inbox[:room], self._inbox[room:]
                if chunk:
                    if opened is None:
                        opened = time.monotonic()
                    await self._call(_submit, self._pipeline, chunk)
                    self._unacked.extend(chunk)
                    submitted += len(chunk)
                    pending = await self._call(_pending, self._pipeline)
            due = opened is not None and time.monotonic() >= opened + cfg.batch_interval
            full = pending >= cfg.batch_max
            if submitted and (due or full or stopping) and time.monotonic() >= retry_at:
                try:
                    await self._commit()
                    submitted = pending = 0
                    opened = None
                    retry_at = 0.0
                except AnchorError as e:
                    # Nothing of this batch is acknowledged; try again, and keep saying why.
                    log.error("commit failed, nothing acknowledged: %s", e.explain())
                    retry_at = time.monotonic() + 1.0
                    if stopping:
                        break
                    await asyncio.sleep(0)
                    continue
            if stopping and not self._inbox:
                break
            if self._inbox:
                self._wake.set()
        self._drained.set()
        self._out_wake.set()

    async def _commit(self) -> None:
        t0 = time.perf_counter()
        result = await self._call(_commit, self._pipeline)
        ms = (time.perf_counter() - t0) * 1000
        batch = list(self._unacked)
        self._unacked.clear()
        # 1. the broker: PUBACK everything of this batch, in arrival order
        client = self._client
        if self.cfg.puback == "commit" and client is not None:
            for m in batch:
                if m.gen == self._gen and m.qos > 0:
                    client._client.ack(m.mid, m.qos)  # noqa: SLF001
        if result is None:
            return
        # 2. the devices
        for dev, ack in _acks(result).items():
            self._queue_out(ack_topic(dev), encode_ack(*ack), False)
        # 3. the retained checkpoint
        text = _checkpoint_text(result)
        if text and text != self._checkpoint:
            self._checkpoint = text
            self._queue_out(CHECKPOINT_TOPIC, text.encode(), True)
        n, entry, root = _batch_figures(result)
        self.stats.batches += 1 if n else 0
        self.stats.readings += n
        log.info(
            "batch: %d readings, entry %s, root %s, commit %.1f ms (%d messages, %d acks)",
            n, "-" if entry is None else entry, root[:16] if root else "-", ms, len(batch),
            len(result.acks),
        )

    # -- outgoing acks and checkpoints ------------------------------------------------------

    def _queue_out(self, topic: str, payload: bytes, retain: bool) -> None:
        self._outgoing.append((topic, payload, retain))
        self._out_wake.set()

    async def _publisher(self) -> None:
        """Publish queued acks/checkpoints while connected; keep them across reconnects."""
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            while self._outgoing and self._connected.is_set() and self._client is not None:
                client = self._client
                batch = [self._outgoing.popleft() for _ in range(min(len(self._outgoing), 500))]
                results = await asyncio.gather(
                    *(client.publish(t, p, qos=1, retain=r) for t, p, r in batch),
                    return_exceptions=True,
                )
                failed = [b for b, r in zip(batch, results, strict=True)
                          if isinstance(r, BaseException)]
                if failed:
                    # Put them back in order; they go out after the reconnect.
                    self._outgoing.extendleft(reversed(failed))
                    break
            if self._drained.is_set() and (not self._outgoing or not self._connected.is_set()):
                if self._outgoing:
                    log.warning(
                        "%d acks not delivered (broker unreachable); devices will republish "
                        "and be acknowledged as duplicates next time", len(self._outgoing),
                    )
                self._final.set()
                return


# -- the pipeline interface (gateway/pipeline.py), kept in one place -------------------------
# The stand-in pipeline in tests/integration/test_service.py implements the same surface.


def _client_id(pipeline: Any) -> str:
    """A stable MQTT client id: "iot-anchor-gw-<gateway key id>" (16 hex digits)."""
    key_id = getattr(pipeline, "key_id", None)
    if key_id is None:
        from gateway import note

        key_id = note.gateway_key_id(pipeline.signer)
    return f"iot-anchor-gw-{key_id}"


def _latest_checkpoint(pipeline: Any) -> str | None:
    store = getattr(pipeline, "store", None)
    if store is None:
        return None
    latest = store.latest_checkpoint()
    return latest[1] if latest else None


def _submit(pipeline: Any, chunk: list[_Inbound]) -> None:
    # Outcomes are counted by the pipeline and stored as rejection counters at the commit.
    pipeline.submit([(m.payload, m.dev) for m in chunk])


def _pending(pipeline: Any) -> int:
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


def run_service(cfg: ServiceConfig, pipeline_factory: Callable[[], Any]) -> int:
    return asyncio.run(GatewayService(cfg, pipeline_factory).run())
