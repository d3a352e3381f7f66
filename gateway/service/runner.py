"""`iot-anchor run`: the service that feeds the pipeline from MQTT and acknowledges what it
anchored. The package docstring (gateway/service/__init__.py) gives the data flow and the
durability rule; this module is the service itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import resource
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.downlink import Downlink
from gateway.errors import AnchorError, BrokerError, ConfigError
from gateway.mqtt.client import PROTOCOL_REFUSALS, BrokerRefused, Connection, Endpoint, session
from gateway.observe.metrics import LiveGauges, ServiceMetrics
from gateway.rules.executor import CommandSender, Executor
from gateway.service.acks import AckOutbox
from gateway.service.config import ServiceConfig
from gateway.service.port import ReadingPipeline, RuleActions
from gateway.service.resources import peak_rss_mb
from gateway.tlog.witness_client import WitnessClient
from gateway.wire.broker_url import parse_broker_url
from gateway.wire.downlink import Command, Confirmation, DownlinkError
from gateway.wire.mqtt import PROP_SHARED_SUBSCRIPTION_AVAILABLE, V5, V311, ConnectOptions
from gateway.wire.topics import (
    CHECKPOINT_TOPIC,
    CONFIRM_TOPIC,
    READINGS_TOPIC,
    ack_topic,
    cmd_topic,
    device_from_confirm_topic,
    device_from_topic_bytes,
    shared,
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
# After a storage failure (the database down or unreachable) the processor waits, then retries:
# RETRY_MIN_S doubling up to RETRY_MAX_S while the failures go on.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
SHARED_GROUP = re.compile(r"[A-Za-z0-9._-]{1,64}")
SUBACK_SHARED_NOT_SUPPORTED = 0x9E

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


@dataclass
class _HttpServer:
    runner: Any  # aiohttp.web.AppRunner
    ctx: Any  # gateway.http.context.HttpContext

    async def stop(self) -> None:
        await self.runner.cleanup()
        await asyncio.to_thread(self.ctx.close)


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
        if cfg.shared is not None and not SHARED_GROUP.fullmatch(cfg.shared):
            raise ConfigError(f"--shared {cfg.shared!r} is not a group name",
                              "give 1-64 characters from A-Z a-z 0-9 . _ -")
        # the subscription: the whole stream, or (MQTT 5) this gateway's share of its group's
        self.topic = READINGS_TOPIC if cfg.shared is None else shared(cfg.shared, READINGS_TOPIC)
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
        # --shared: the largest checkpoint size seen on anchor/checkpoint (every gateway of
        # the group publishes there; an older one is not published over a newer one)
        self._seen_checkpoint = -1
        # Back-pressure: at this many waiting messages the broker's socket is not read until
        # half of them are worked off; the backlog waits in the broker. What the read under
        # way still holds (one socket read, at most 256 KiB) is taken.
        self._high_water = cfg.inbox_max or max(8 * cfg.batch_max, 32768)
        self._paused: Connection | None = None
        self._drained = asyncio.Event()  # the processor made its last commit
        self._final = asyncio.Event()  # ... and the publisher sent what it could
        self.stats = _Stats()
        self.client_id = ""
        # mirrors of the processor's counts, for the metrics' gauges (read at scrape time)
        self._verifying = 0  # messages started with the verifiers, not finished
        self._open_batch = 0  # readings in the pipeline's open batch
        self.metrics = ServiceMetrics(self.live_gauges)
        self.http_url: str | None = None  # with cfg.http, once the server listens
        self.witnesses: WitnessClient | None = None
        if cfg.witnesses:
            self.witnesses = WitnessClient(cfg.data_dir, cfg.witnesses, cfg.witness_quorum)
        self._puback_waits: dict[int, asyncio.Future[None]] = {}
        # rules (docs/rules.md): the action loop's wake-up
        self._actions_wake = asyncio.Event()
        # the authenticated downlink's command sender (None: command actions wait), and what
        # it takes: command_factory(device, id, op, args)
        self.command_sender: CommandSender | None = self
        self.command_factory: Callable[[str, int, str, dict[str, Any]], Any] = Command
        self._storage_failures = 0  # storage failures in a row (the retry's backoff)
        self._downlink_factory = downlink_factory or (
            lambda: Downlink.open(cfg.data_dir, shared=cfg.shared is not None))
        self.downlink: Downlink | None = None
        self.on_confirmation: Callable[[Confirmation], Any] = (on_confirmation
                                                               or self._rules_confirmation)
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
            if self.cfg.shared is not None:
                # every gateway of the group has the key: the id must differ per process
                self.client_id += f"-{self.cfg.shared}-{socket.gethostname()[:32]}-{os.getpid()}"
            self._checkpoint = await self._call(pipe.latest_checkpoint)
            self._checkpoint_out = self._checkpoint is not None
            log.info(
                "gateway %s: broker %s, batch interval %.3g s, batch max %d, PUBACK on %s%s",
                self.client_id, self.broker_shown, self.cfg.batch_interval, self.cfg.batch_max,
                self.cfg.puback, "" if self.cfg.shared is None else
                f", shared subscription group {self.cfg.shared} (MQTT 5, clean session)",
            )
            http = await self._start_http()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._connection_loop(), name="connection")
                    tg.create_task(self._processor(), name="processor")
                    tg.create_task(self._publisher(), name="publisher")
                    if self.witnesses is not None:
                        tg.create_task(self.witnesses.run(self._drained), name="witnesses")
                    if isinstance(pipe, RuleActions):
                        tg.create_task(self._actions(pipe), name="actions")
            except BaseExceptionGroup as group:
                # The CLI explains an AnchorError in one line; do not hide it in a group.
                for e in group.exceptions:
                    if isinstance(e, AnchorError):
                        raise e from None
                raise
            finally:
                if http is not None:
                    await http.stop()
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

    def live_gauges(self) -> LiveGauges:
        """What waits in the service now (the metrics' gauges; cheap, on the event loop)."""
        st = self.stats
        return LiveGauges(
            inbox=len(self._inbox), verifying=self._verifying, open_batch=self._open_batch,
            acks_in_flight=self.acks_in_flight(), acks_waiting=len(self._acks_out),
            connected=self._connected.is_set(), received=st.received,
            acks_published=st.acks_published, pauses=st.pauses,
            witnesses=() if self.witnesses is None else tuple(
                (t.key.name, t.state, t.size) for t in self.witnesses.targets))

    async def _start_http(self) -> _HttpServer | None:
        """`run --http`: the read-only HTTP server (gateway.http) on this loop."""
        if self.cfg.http is None:
            return None
        from gateway.http.app import serve, url_of
        from gateway.http.context import HttpContext

        ctx = await asyncio.to_thread(HttpContext.for_data_dir, self.cfg.data_dir, self)
        try:
            runner = await serve(ctx, self.cfg.http[0], self.cfg.http[1], self.cfg.http_token)
        except BaseException:
            await asyncio.to_thread(ctx.close)
            raise
        self.http_url = url_of(runner)
        log.info("serving the log on %s", self.http_url)
        return _HttpServer(runner, ctx)

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
        if topic == _CHECKPOINT_BYTES and self.cfg.shared is not None:
            self._seen_checkpoint = max(self._seen_checkpoint, _checkpoint_size(payload))
            return  # QoS 0: nothing to acknowledge
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
        if self.downlink is None:
            raise BrokerError("not connected to the broker", "retry once the gateway is "
                              "connected")
        if self.downlink.shared:
            await asyncio.to_thread(self.downlink.reserve, [cmd.device])
        await self.publish_confirmed(cmd_topic(cmd.device), self.downlink.seal_command(cmd),
                                     timeout)
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
        if self.cfg.shared is None:
            options = ConnectOptions(self.client_id, self.cfg.keepalive, clean=False,
                                     username=self.url.username, password=self.url.password,
                                     version=V311)
        else:
            # A clean session (MQTT 5: clean start, session expiry 0): Mosquitto 2.0 keeps
            # handing a persistent session's share of the group's messages to it while its
            # gateway is down (tests/integration/test_shared_subscriptions.py), where nobody
            # anchors them; a clean one leaves the group when its connection ends, and what it
            # had not PUBACKed is republished by the devices' outboxes (docs/operations.md).
            options = ConnectOptions(self.client_id, self.cfg.keepalive, clean=True,
                                     username=self.url.username, password=self.url.password,
                                     version=V5)
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
            except BrokerRefused as e:
                if self.cfg.shared is not None and e.code in PROTOCOL_REFUSALS:
                    raise ConfigError(
                        f"--shared needs MQTT 5, and {e.what.removesuffix('.')}",
                        "use a broker that speaks MQTT 5 (Mosquitto 2.0 or later, EMQX, "
                        "HiveMQ), or run one gateway without --shared") from None
                failures += 1
                error = e.explain()
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
        if self.cfg.shared is not None and \
                conn.connack_properties.get(PROP_SHARED_SUBSCRIPTION_AVAILABLE, 1) == 0:
            raise ConfigError(f"the broker {self.broker_shown} does not offer shared "
                              "subscriptions (its CONNACK says so)",
                              "enable them in the broker, or run one gateway without --shared")
        filters = [(self.topic, 1), (CONFIRM_TOPIC, 1)]
        if self.cfg.shared is not None:
            filters.append((CHECKPOINT_TOPIC, 0))  # the group's latest checkpoint, at QoS 0
        sub = asyncio.ensure_future(conn.subscribe(filters))
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
                codes = sub.result()
                if SUBACK_SHARED_NOT_SUPPORTED in codes and self.cfg.shared is not None:
                    raise ConfigError(f"the broker {self.broker_shown} refused the shared "
                                      f"subscription {self.topic}: not supported",
                                      "enable shared subscriptions in the broker, or run one "
                                      "gateway without --shared")
                if any(code >= 0x80 for code in codes):
                    raise BrokerError(
                        f"the broker refused the subscription to {self.topic} or "
                        f"{CONFIRM_TOPIC}", "check the gateway's ACL in the broker config")
                log.info("subscribed to %s and %s", self.topic, CONFIRM_TOPIC)
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
            inflight_n = self._verifying = 0

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
                    delay = self._retry_delay()
                    log.error("cannot check readings, retrying in %.1f s: %s", delay,
                              e.explain())
                    self._inbox[:0] = chunk
                    put_back()
                    retry_at = time.monotonic() + delay
                    break
                inflight.append((sub, chunk))
                inflight_n += len(chunk)
                self._verifying = inflight_n
                if opened is None:
                    opened = time.monotonic()
            # 2. finish the oldest (all of them when there is nothing else to start)
            while inflight and time.monotonic() >= retry_at and (
                    len(inflight) >= AHEAD or not gathered() or stopping):
                sub, chunk = inflight[0]
                try:
                    pending = await self._call(_finish, self._pipe(), sub)
                except AnchorError as e:
                    delay = self._retry_delay()
                    log.error("cannot check readings, retrying in %.1f s: %s", delay,
                              e.explain())
                    put_back()  # classified ones come back as duplicates of the open batch
                    retry_at = time.monotonic() + delay
                    break
                inflight.popleft()
                inflight_n -= len(chunk)
                self._verifying = inflight_n
                self._open_batch = pending
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
                    submitted = pending = self._open_batch = 0
                    opened = time.monotonic() if inflight else None
                    retry_at = 0.0
                    self._storage_failures = 0
                except AnchorError as e:
                    # Nothing of this batch is acknowledged; try again, and keep saying why.
                    delay = self._retry_delay()
                    log.error("commit failed, nothing acknowledged, retrying in %.1f s: %s",
                              delay, e.explain())
                    retry_at = time.monotonic() + delay
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


    def _retry_delay(self) -> float:
        """The wait before the next attempt after a storage failure: RETRY_MIN_S, doubling
        with each failure in a row up to RETRY_MAX_S (a database restarting, a network
        partition), with +-25 % jitter so that a group's gateways do not retry in step."""
        delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(self._storage_failures, 8))
        self._storage_failures += 1
        return delay * (0.75 + random.random() / 2)

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
        if result.actions:
            self._actions_wake.set()
        # 2. the devices
        for dev, a in result.acks.items():
            self._acks_out.merge(dev, -1 if a.upto is None else a.upto, a.seqs, a.entry)
        # 3. the retained checkpoint
        text = result.checkpoint
        if text and text != self._checkpoint:
            self._checkpoint = text
            self._checkpoint_out = True
            if self.witnesses is not None:
                self.witnesses.notify()
        self._out_wake.set()
        n = result.readings
        self.stats.batches += 1 if n else 0
        self.stats.readings += n
        self.metrics.committed(n, ms / 1000, result.rejected)
        root = result.root.hex() if result.root else "-"
        seq = getattr(self._pipeline, "sequencer", None) if self.cfg.shared else None
        log.info(
            "batch: %d readings, entry %s, root %s, commit %.1f ms (%d messages, %d acks)%s",
            n, "-" if result.entry is None else result.entry, root[:16], ms, len(batch),
            len(result.acks), "" if not seq else
            f"; sequencer lock waited {seq[0] * 1000:.1f} ms, held {seq[1] * 1000:.1f} ms",
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
        if downlink.shared:  # only those with a counter reserved; the rest on the next round
            later = set(downlink.missing([dev for dev, _ in items]))
            if later:
                self._acks_out.put_back([it for it in items if it[0] in later])
                items = [it for it in items if it[0] not in later]
                self._out_wake.set()
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
        if self._checkpoint_out and self._checkpoint and self.cfg.shared is not None and \
                _checkpoint_size(self._checkpoint.encode()) <= self._seen_checkpoint:
            self._checkpoint_out = False  # another gateway of the group published it or a newer one
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

    async def _reserve_counters(self) -> None:
        """`run --shared`: the group's next downlink counter of each device with an ack
        waiting, from the store (Downlink.reserve; a round trip per round of acks)."""
        downlink = self.downlink
        if downlink is None or not downlink.shared:
            return
        devs = downlink.missing(self._acks_out.devices())
        if devs:
            try:
                await asyncio.to_thread(downlink.reserve, devs)
            except AnchorError as e:  # the acks wait; the next round tries again
                log.warning("downlink counters not taken, acks wait: %s", e.explain())
                await asyncio.sleep(self._retry_delay())

    async def _publisher(self) -> None:
        """Publish acks/checkpoints while connected; the waiting ones survive reconnects."""
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            conn = self._conn
            if self._connected.is_set() and conn is not None:
                await self._reserve_counters()
                self._publish_round(conn)
            if self._drained.is_set():
                break
        # The last commit is done: wait (bounded) until the broker has PUBACKed our acks.
        deadline = time.monotonic() + 10
        while self._connected.is_set() and time.monotonic() < deadline:
            conn = self._conn
            if self._acks_out and conn is not None:
                await self._reserve_counters()
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


    # -- rules: the actions recorded by the commits (docs/rules.md) -------------------------

    async def publish_confirmed(self, topic: str, payload: bytes, timeout: float = 10) -> None:
        """Publish at QoS 1 and return once the broker PUBACKed it; BrokerError otherwise."""
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise BrokerError("not connected to the broker", "it is sent once reconnected")
        pid = conn.publish(topic.encode(), payload)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._puback_waits[pid] = fut
        try:
            waiting: set[asyncio.Future[Any]] = {fut, conn.closed}
            done, _ = await asyncio.wait(waiting, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                raise BrokerError(f"no PUBACK for {topic} within {timeout:g} s",
                                  "the broker did not take it: it is sent again later")
        finally:
            self._puback_waits.pop(pid, None)

    async def rule_confirmation(self, device: str, command_id: int, ok: bool,
                                reason: str | None, cose: bytes) -> int | None:
        """A verified confirmation from `device` of command `command_id`: records the
        command's outcome ("done", or "failed" with the device's reason) and returns its entry;
        None for a command that was not sent to it or is closed already. The downlink calls
        this for each confirmation it verified."""
        pipe = self._pipe()
        if not isinstance(pipe, RuleActions):
            return None
        return await self._call(pipe.confirm_command, device, command_id, ok, reason, cose)

    async def _rules_confirmation(self, conf: Confirmation) -> None:
        """The default on_confirmation: log it, and record the outcome of the rule action that
        ordered the command (docs/rules.md)."""
        _log_confirmation(conf)
        await self.rule_confirmation(conf.device, conf.id, conf.ok, conf.reason or None,
                                     conf.cose)

    async def _actions(self, pipe: RuleActions) -> None:
        """Carry out the pending actions (also those a killed run left), record outcomes, and
        tick the silence rules about once a second, until the last commit is done."""
        ex = Executor(self, self.command_sender, make_command=self.command_factory)
        busy: dict[int, asyncio.Task[None]] = {}
        done: list[tuple[int, str, str | None, bytes | None]] = []
        limit = asyncio.Semaphore(16)
        # the pending actions are read above the newest one taken (`seen`), and all of them
        # again only after one could not be carried out now (`rescan`): decoding every
        # pending entry at each wake-up cost a storm of firings 14 % of the process
        seen, rescan = -1, True

        async def one(e: Any) -> None:
            nonlocal rescan
            async with limit:
                try:
                    res = await ex.perform(e)
                except Exception as err:  # a bug in an action must not stop the gateway
                    log.error("action of entry %d: %s", e.i, err)
                    res = None
            if res is not None:
                done.append((e.i, res[0], res[1], None))
            else:
                rescan = True  # still pending: taken again by the next full read

        last_tick = 0.0
        while True:
            stopping = self._drained.is_set()
            try:
                if time.monotonic() - last_tick >= 1.0 and not stopping:
                    last_tick = time.monotonic()
                    await self._call(pipe.tick_rules)
                if done:
                    batch, done[:] = list(done), []
                    await self._call(pipe.record_outcomes, batch)
                # the finished ones leave `busy` (those whose outcome is recorded, or that are
                # still pending and are read again now), the new pending ones are started
                recording = {d[0] for d in done}
                for i in [i for i, t in busy.items() if t.done() and i not in recording]:
                    busy.pop(i)
                after, rescan = (-1 if rescan else seen), False
                for e in await self._call(pipe.pending_actions, after):
                    seen = max(seen, e.i)
                    if e.i not in busy:
                        busy[e.i] = asyncio.ensure_future(one(e))
            except AnchorError as err:
                rescan = True
                log.error("rules: %s", err.explain())
            if stopping:
                if busy:  # the last ones get a few seconds; the rest wait for the next run
                    await asyncio.wait(busy.values(), timeout=5)
                    for t in busy.values():
                        t.cancel()
                    if done:
                        with contextlib.suppress(AnchorError):
                            await self._call(pipe.record_outcomes, list(done))
                return
            self._actions_wake.clear()
            waits = [asyncio.ensure_future(self._actions_wake.wait()),
                     asyncio.ensure_future(self._drained.wait())]
            await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()


_CHECKPOINT_BYTES = CHECKPOINT_TOPIC.encode()


def _checkpoint_size(note_text: bytes) -> int:
    """The tree size of a checkpoint note (its second line); -1 for anything else."""
    lines = note_text.split(b"\n", 2)
    try:
        return int(lines[1]) if len(lines) > 2 else -1
    except ValueError:
        return -1


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
