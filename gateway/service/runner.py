"""`iot-anchor run`: the service that feeds the pipeline from MQTT and acknowledges what it
anchored. The package docstring (gateway/service/__init__.py) gives the data flow and the
durability rule; this module is the service itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.downlink import Downlink
from gateway.errors import AnchorError, BrokerError, ConfigError
from gateway.mqtt.client import Connection, Endpoint, session
from gateway.service.acks import AckOutbox
from gateway.service.config import ServiceConfig
from gateway.service.port import ReadingPipeline
from gateway.service.resources import peak_rss_mb
from gateway.wire.broker_url import parse_broker_url
from gateway.wire.downlink import Command, Confirmation, DownlinkError
from gateway.wire.mqtt import V311, ConnectOptions
from gateway.wire.topics import (
    CHECKPOINT_TOPIC,
    CONFIRM_TOPIC,
    READINGS_TOPIC,
    ack_topic,
    cmd_topic,
    device_from_confirm_topic,
    device_from_topic_bytes,
)

log = logging.getLogger("iot_anchor.service")

# The processor keeps up to AHEAD chunks of at most START_CHUNK messages with the verifiers.
# It starts a chunk once GATHER_MIN messages wait or the oldest has waited GATHER_S, so that a
# steady trickle is handled in chunks (one wake-up, one hand-off per chunk) and not one by one.
AHEAD = 3
START_CHUNK = 1024
GATHER_MIN = 256
GATHER_S = 0.01
# Our QoS 1 publishes (acks, the checkpoint) the broker has not PUBACKed yet, at most; above it
# acks wait in the AckOutbox, coalesced per device (bounded by the fleet, not the backlog).
ACKS_INFLIGHT_MAX = 4096
# The interpreter's GIL switch interval for `run` (CPython's default is 5 ms): the event loop
# and the pipeline thread (classify, SQLite) both want the GIL; with 5 ms a commit waited up to
# 5 ms each time it got it back (make bench at 11,000/s offered: p99 2,070 -> 1,007 ms).
SWITCH_INTERVAL_S = 0.0005

T = TypeVar("T")


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
    pauses: int = 0
    commands_sent: int = 0
    confirmations: int = 0  # verified
    confirmations_refused: int = 0


class GatewayService:
    """The `run` service. `run()` returns the process exit code (0 after a clean stop).

    `pipeline_factory` builds the pipeline; it is called in the worker thread, which also
    makes every later call on it (SQLite handles belong to the thread that opened them).
    `downlink_factory` builds the `Downlink` that seals acks and commands and verifies
    confirmations (default: `Downlink.open(cfg.data_dir)`); it is called and used on the event
    loop. `on_confirmation(conf)` gets every verified confirmation from anchor/+/confirm
    (default: logged); an awaitable it returns is awaited before the broker gets its PUBACK.
    """

    def __init__(self, cfg: ServiceConfig,
                 pipeline_factory: Callable[[], ReadingPipeline],
                 downlink_factory: Callable[[], Downlink] | None = None,
                 on_confirmation: Callable[[Confirmation], Any] | None = None) -> None:
        if cfg.batch_interval <= 0:
            raise ConfigError(
                f"--batch-interval {cfg.batch_interval} is not positive", "give e.g. 1"
            )
        if cfg.batch_max < 1:
            raise ConfigError(f"--batch-max {cfg.batch_max} is below 1", "give e.g. 4096")
        if cfg.puback not in ("commit", "receipt"):
            raise ConfigError(f"--puback {cfg.puback!r} is unknown", "use commit or receipt")
        self.cfg = cfg
        self.url = parse_broker_url(cfg.broker, what="--broker")
        self.broker_shown = self.url.shown  # never log the password
        self._endpoint: Endpoint | None = None  # made in run(): TLS set-up reads files
        self._factory = pipeline_factory
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="anchor-pipeline")
        self._pipeline: ReadingPipeline | None = None
        self._inbox: list[_Inbound] = []
        self._inbox_t0 = 0.0  # when the inbox last went from empty to not empty
        self._accepting = True
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: Connection | None = None
        self._connected = asyncio.Event()
        self._gen = 0
        self._unacked: list[_Inbound] = []  # submitted, waiting for the commit
        self._acks_out = AckOutbox()
        self._checkpoint_out = False
        self._out_wake = asyncio.Event()
        self._checkpoint: str | None = None
        # Back-pressure: at this many waiting messages the broker's socket is not read until
        # half of them are worked off; the backlog waits in the broker. What the read under
        # way still holds (one socket read, at most 256 KiB) is taken.
        self._high_water = cfg.inbox_max or max(8 * cfg.batch_max, 32768)
        self._paused: Connection | None = None
        self._drained = asyncio.Event()  # the processor made its last commit
        self._final = asyncio.Event()  # ... and the publisher sent what it could
        self.stats = _Stats()
        self.client_id = ""
        self._downlink_factory = downlink_factory or (lambda: Downlink.open(cfg.data_dir))
        self.downlink: Downlink | None = None
        self.on_confirmation: Callable[[Confirmation], Any] = on_confirmation or _log_confirmation
        self._puback_waits: dict[int, asyncio.Future[None]] = {}
        self._confirm_tasks: set[asyncio.Task[None]] = set()

    # -- the worker thread ------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _pipe(self) -> ReadingPipeline:
        assert self._pipeline is not None
        return self._pipeline

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            self._endpoint = Endpoint.from_url(self.url)
            self.downlink = self._downlink_factory()
            self._pipeline = await self._call(self._factory)
            pipe = self._pipe()
            self.client_id = "iot-anchor-gw-" + await self._call(pipe.gateway_key_id)
            self._checkpoint = await self._call(pipe.latest_checkpoint)
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
                    await self._call(self._pipeline.close)
            if self.downlink is not None:
                with contextlib.suppress(Exception):
                    self.downlink.close()
            self._pool.shutdown(wait=True)

    @property
    def connected(self) -> bool:
        """Connected to the broker (CONNACK received)."""
        return self._connected.is_set()

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: closing the open batch")
        self._stop.set()
        self._wake.set()
        self._out_wake.set()

    # -- MQTT connection --------------------------------------------------------------------

    def _take(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """One message from the broker (the client's on_publish), on the event loop."""
        if not self._accepting:
            return  # stopping: not PUBACKed, the broker keeps it for the next run
        if topic[-8:] == b"/confirm":
            self._take_confirmation(topic, payload, mid, qos)
            return
        # "" matches no device: rejected as topic_mismatch (a topic that is not UTF-8, or not
        # anchor/<id>/readings with a non-empty id)
        self._inbox.append(_Inbound(device_from_topic_bytes(topic), payload, mid, qos,
                                    self._gen))
        self.stats.received += 1
        n = len(self._inbox)
        if n > self.stats.inbox_peak:
            self.stats.inbox_peak = n
        if n >= self._high_water and self._paused is None and self._conn is not None:
            self._conn.pause_reading()
            self._paused = self._conn
            self.stats.pauses += 1
        if n == 1:  # the processor starts the gather clock
            self._inbox_t0 = time.monotonic()
            self._wake.set()
        elif n == GATHER_MIN:
            self._wake.set()

    def _take_confirmation(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """A device's confirmation of a command: verified, handed to on_confirmation, then
        PUBACKed (a refused one too: a forgery is not worth a redelivery)."""
        dev = device_from_confirm_topic(topic)
        conn, gen = self._conn, self._gen
        result: Any = None
        try:
            assert self.downlink is not None
            conf = self.downlink.verify_confirmation(dev, payload)
        except DownlinkError as e:
            self.stats.confirmations_refused += 1
            log.warning("confirmation on %s refused: %s", topic.decode(errors="replace"), e)
        else:
            self.stats.confirmations += 1
            try:
                result = self.on_confirmation(conf)
            except Exception:  # noqa: BLE001 - the hook's bug must not stop the service
                log.exception("on_confirmation failed for %s command %d", dev, conf.id)

        async def finish() -> None:
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                try:
                    await result
                except Exception:  # noqa: BLE001
                    log.exception("on_confirmation failed for a confirmation of %s", dev)
                    return  # not PUBACKed: the broker redelivers it
            if qos and self.cfg.puback == "commit" and conn is not None and gen == self._gen:
                with contextlib.suppress(BrokerError):
                    conn.puback([mid])

        task = asyncio.ensure_future(finish())
        self._confirm_tasks.add(task)
        task.add_done_callback(self._confirm_tasks.discard)

    async def send_command(self, cmd: Command, timeout: float = 10.0) -> None:
        """Seal `cmd` and publish it on anchor/<device>/cmd (QoS 1); return once the broker
        PUBACKs it. BrokerError when not connected, when the connection ends first, or after
        `timeout` seconds; ConfigError when the device is not registered."""
        conn = self._conn
        if conn is None or not self._connected.is_set() or self.downlink is None:
            raise BrokerError("not connected to the broker", "retry once the gateway is "
                              "connected")
        msg = self.downlink.seal_command(cmd)
        pid = conn.publish(cmd_topic(cmd.device).encode(), msg)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._puback_waits[pid] = fut
        try:
            waiting: set[asyncio.Future[Any]] = {fut, conn.closed}
            done, _ = await asyncio.wait(waiting, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                raise BrokerError(f"no PUBACK for the command to {cmd.device} (id {cmd.id})",
                                  "the broker did not take it; send it again")
        finally:
            self._puback_waits.pop(pid, None)
        self.stats.commands_sent += 1
        log.info("command %d (%s) sent to %s", cmd.id, cmd.op, cmd.device)

    def _resume_reading(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.resume_reading()  # a connection that is gone ignores it

    def _on_puback(self, pid: int) -> None:
        """The broker PUBACKed one of our publishes: acks held at the bound may go now."""
        fut = self._puback_waits.pop(pid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._acks_out and self._connected.is_set():
            self._out_wake.set()

    async def _connection_loop(self) -> None:
        assert self._endpoint is not None
        failures = 0
        options = ConnectOptions(self.client_id, self.cfg.keepalive, clean=False,
                                 username=self.url.username, password=self.url.password,
                                 version=V311)
        manual = self.cfg.puback == "commit"
        while not self._stop.is_set():
            error = "the connection ended"
            # A new generation before connecting: a persistent session's backlog can arrive in
            # the same read as the CONNACK, and those messages must be PUBACKed on this
            # connection (packet ids of older connections died with them).
            self._gen += 1
            try:
                async with session(self._endpoint, options, self._take, self._on_puback,
                                   manual_ack=manual) as conn:
                    self._conn = conn
                    self._connected.set()
                    self._out_wake.set()
                    if failures:
                        log.info("reconnected to %s", self.broker_shown)
                    else:
                        log.info("connected to %s as %s", self.broker_shown, self.client_id)
                    failures = 0
                    if self._checkpoint:
                        self._checkpoint_out = True
                    await self._session(conn)
            except BrokerError as e:
                failures += 1
                error = e.explain()
            finally:
                self._connected.clear()
                self._conn = None
                self._paused = None  # a new connection reads from the start
                self._out_wake.set()
            if self._stop.is_set():
                break
            delay = min(self.cfg.backoff_max, self.cfg.backoff_min * 2 ** min(failures, 16))
            delay *= 0.5 + random.random()
            log.warning("broker %s: %s; retrying in %.1f s", self.broker_shown,
                        error.replace(self.url.password or "\0", "***"), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, conn: Connection) -> None:
        """Return on stop (after the final acks went out); raise BrokerError on disconnect."""
        sub = asyncio.ensure_future(conn.subscribe([(READINGS_TOPIC, 1), (CONFIRM_TOPIC, 1)]))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                waiting: set[asyncio.Future[Any]] = {conn.closed, stopper}
                if not sub.done():
                    waiting.add(sub)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if conn.closed.done():
                    conn.closed.result()  # raises the BrokerError of the disconnect
                    return
                if stopper.done():
                    # Stop requested: let the final commit's acks go out, then disconnect.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._final.wait(), 15)
                    return
                # No timeout on the SUBACK: a persistent session's backlog arrives before it,
                # and the session keeps its subscription anyway.
                if any(code >= 0x80 for code in sub.result()):
                    raise BrokerError(
                        f"the broker refused the subscription to {READINGS_TOPIC} or "
                        f"{CONFIRM_TOPIC}", "check the gateway's ACL in the broker config")
        finally:
            for t in (sub, stopper):
                t.cancel()
            await asyncio.gather(sub, stopper, return_exceptions=True)

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
                if self._paused and len(self._inbox) < self._high_water // 2:
                    self._resume_reading()
                try:
                    sub = await self._call(self._pipe().start,
                                          [(m.payload, m.dev) for m in chunk])
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
                    pending = await self._call(_finish, self._pipe(), sub)
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
        result = await self._call(self._pipe().commit)
        ms = (time.perf_counter() - t0) * 1000
        batch, self._unacked = self._unacked, []
        # 1. the broker: PUBACK everything of this batch that came on this connection, in
        # arrival order (MQTT 3.1.1 section 4.6)
        conn = self._conn
        if self.cfg.puback == "commit" and conn is not None:
            with contextlib.suppress(BrokerError):  # gone: the broker redelivers them
                conn.puback([m.mid for m in batch if m.gen == self._gen and m.qos == 1])
        if result is None:
            return
        # 2. the devices
        for dev, a in result.acks.items():
            self._acks_out.merge(dev, -1 if a.upto is None else a.upto, a.seqs, a.entry)
        # 3. the retained checkpoint
        text = result.checkpoint
        if text and text != self._checkpoint:
            self._checkpoint = text
            self._checkpoint_out = True
        self._out_wake.set()
        n = result.readings
        self.stats.batches += 1 if n else 0
        self.stats.readings += n
        root = result.root.hex() if result.root else "-"
        log.info(
            "batch: %d readings, entry %s, root %s, commit %.1f ms (%d messages, %d acks)",
            n, "-" if result.entry is None else result.entry, root[:16], ms, len(batch),
            len(result.acks),
        )

    # -- outgoing acks and checkpoints ------------------------------------------------------

    def _publish_round(self, conn: Connection) -> bool:
        """Publish every waiting ack (up to the in-flight bound) and the checkpoint. False if
        the connection is closed."""
        room = ACKS_INFLIGHT_MAX - len(conn.in_flight)
        if room <= 0:  # all wait, untouched, until PUBACKs come in (_on_puback)
            self.stats.acks_held += bool(self._acks_out)
            items = []
        else:
            items = self._acks_out.take(room)
            if self._acks_out:
                self.stats.acks_held += 1
        downlink = self.downlink
        assert downlink is not None
        for k, (dev, (upto, seqs, entry)) in enumerate(items):
            try:
                sealed = downlink.seal_ack(dev, upto, seqs, entry)
            except ConfigError as e:  # revoked since the commit: it gets no ack
                log.warning("no ack for %s: %s", dev, e.explain())
                continue
            try:
                conn.publish(ack_topic(dev).encode(), sealed)
            except BrokerError:
                self._acks_out.put_back(items[k:])
                return False
        self.stats.acks_published += len(items)
        if self._checkpoint_out and self._checkpoint:
            try:
                conn.publish(CHECKPOINT_TOPIC.encode(), self._checkpoint.encode(), retain=True)
            except BrokerError:
                return False
            self._checkpoint_out = False
        return True

    def acks_in_flight(self) -> int:
        """Acks (and the checkpoint) sent on this connection and not yet PUBACKed."""
        conn = self._conn
        return 0 if conn is None else len(conn.in_flight)

    async def _publisher(self) -> None:
        """Publish acks/checkpoints while connected; the waiting ones survive reconnects."""
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            conn = self._conn
            if self._connected.is_set() and conn is not None:
                self._publish_round(conn)
            if self._drained.is_set():
                break
        # The last commit is done: wait (bounded) until the broker has PUBACKed our acks.
        deadline = time.monotonic() + 10
        while self._connected.is_set() and time.monotonic() < deadline:
            conn = self._conn
            if self._acks_out and conn is not None:
                self._publish_round(conn)
            if not self._acks_out and self.acks_in_flight() == 0:
                break
            await asyncio.sleep(0.02)
        if self._acks_out:
            log.warning(
                "%d acks not delivered (broker unreachable); the devices will republish and "
                "be acknowledged (as duplicates) next time", len(self._acks_out),
            )
        self._final.set()


def _log_confirmation(conf: Confirmation) -> None:
    """The default on_confirmation: one log line."""
    log.info("confirmation from %s: command %d (%s) %s", conf.device, conf.id, conf.op,
             "done" if conf.ok else f"failed: {conf.reason}")


def _finish(pipeline: ReadingPipeline, submission: Any) -> int:
    """Classify a started chunk into the open batch; the open batch's size after it."""
    pipeline.finish(submission)
    return pipeline.pending()


def run_service(cfg: ServiceConfig, pipeline_factory: Callable[[], ReadingPipeline]) -> int:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return asyncio.run(GatewayService(cfg, pipeline_factory).run())
