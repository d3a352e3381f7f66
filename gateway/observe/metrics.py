"""Prometheus metrics of the gateway (prometheus-client), served on `/metrics`.

Two sources, so that nothing is counted per reading on the hot path:

* `ServiceMetrics`: the running service (`iot-anchor run`). Counters and histograms move once
  per commit (`committed`), from the commit's result; the gauges are read when Prometheus
  scrapes, from a `LiveGauges` snapshot the service hands over (`gauges` callback), so the
  service only keeps the plain integers it keeps anyway; so are its witnesses' states (the
  witness client's, gateway/tlog/witness_client.py). The process's CPU and memory come
  from prometheus-client's ProcessCollector, the verifier workers' memory from /proc.
* `ledger_exposition(figures)`: what the ledger holds (`LedgerFigures`, read from the store
  with one bounded query each), the same numbers as `iot-anchor ledger status`; served by
  `run --http` and by `serve`.

The `_total` counters of `ServiceMetrics` count since the service started (Prometheus'
`rate()` and `increase()` handle the reset of a restart); on a fresh data directory they equal
`ledger status`. The `iot_anchor_ledger_*` gauges are the ledger's totals at any time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

NS = "iot_anchor"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# readings per batch: from a trickle (1) up to the largest --batch-max in use (16,384)
BATCH_BUCKETS = (1, 4, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)
# one commit (SQLite transaction with fsync, signing the checkpoint): 1 ms .. 5 s
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WITNESS_UNKNOWN, WITNESS_OK, WITNESS_FAILING = 0, 1, 2
# a witness client's state -> the value of iot_anchor_witness_status
WITNESS_STATES = {"ok": WITNESS_OK, "error": WITNESS_FAILING}


@dataclass(frozen=True, slots=True)
class LiveGauges:
    """What the running service has waiting, at one moment."""

    inbox: int = 0  # messages received, not yet handed to the verifiers
    verifying: int = 0  # messages with the verifier pool (started, not classified)
    open_batch: int = 0  # readings classified into the open batch, not yet committed
    acks_in_flight: int = 0  # our QoS 1 publishes (acks, checkpoint) not yet PUBACKed
    acks_waiting: int = 0  # devices whose ack waits in the service (coalesced per device)
    connected: bool = False
    received: int = 0  # messages received since start
    acks_published: int = 0  # device acks published since start
    pauses: int = 0  # times reading from the broker paused (back-pressure)
    # the witnesses the service sends checkpoints to: (name, state, size last cosigned)
    witnesses: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    """The ledger's totals (what `ledger status` shows), read from the store."""

    readings: int
    entries: int
    devices: int
    revoked: int
    checkpoint_size: int
    checkpoint_time_ms: int | None  # the newest entry's time (the checkpoint has none)
    rejected: Mapping[str, int] = field(default_factory=dict)
    events: Mapping[str, int] = field(default_factory=dict)
    cosignatures: int = 0  # witness cosignatures gathered for the newest checkpoint
    # per witness as the gateway last saw it: {"witness", "size", "state", "t" (ms)}
    witnesses: tuple[Mapping[str, Any], ...] = ()


def children_rss_bytes(proc: Path = Path("/proc")) -> int:
    """Resident memory of this process's child processes (the verifier workers), from
    /proc/self/task/*/children and /proc/PID/statm; 0 where /proc lacks them."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    try:
        tasks = list((proc / "self" / "task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                total += int((proc / pid / "statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue
    return total


class _LiveCollector:
    """The gauges read at scrape time from the service's `LiveGauges`."""

    def __init__(self, gauges: Callable[[], LiveGauges]) -> None:
        self._gauges = gauges

    def describe(self) -> Iterable[Metric]:
        return []  # built at scrape time: nothing to check against at registration

    def collect(self) -> Iterable[Metric]:
        g = self._gauges()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{NS}_{name}", doc, value=value)

        yield gauge("inbox_messages", "Messages received and waiting for the verifiers",
                    g.inbox)
        yield gauge("verify_queue_messages",
                    "Messages handed to the verifier pool and not yet classified", g.verifying)
        yield gauge("open_batch_readings", "Readings in the open batch, not yet committed",
                    g.open_batch)
        yield gauge("acks_in_flight", "Acks and checkpoints published at QoS 1, not yet "
                    "PUBACKed by the broker", g.acks_in_flight)
        yield gauge("acks_waiting_devices", "Devices whose ack waits in the service (at the "
                    "in-flight bound or while disconnected)", g.acks_waiting)
        yield gauge("broker_connected", "1 while connected to the MQTT broker",
                    1 if g.connected else 0)
        yield CounterMetricFamily(f"{NS}_messages_received", "MQTT messages received",
                                  value=g.received)
        yield CounterMetricFamily(f"{NS}_acks_published", "Device acks published",
                                  value=g.acks_published)
        yield CounterMetricFamily(f"{NS}_read_pauses", "Times reading from the broker "
                                  "paused at the inbox bound", value=g.pauses)
        yield gauge("verifier_resident_memory_bytes", "Resident memory of the verifier "
                    "worker processes", children_rss_bytes())
        yield gauge("witnesses", "Witnesses the service sends checkpoints to (0: none)",
                    len(g.witnesses))
        status = GaugeMetricFamily(f"{NS}_witness_status", "Per witness: 0 unknown (not "
                                   "answered yet), 1 cosigning, 2 failing", labels=["witness"])
        size = GaugeMetricFamily(f"{NS}_witness_cosigned_size", "Per witness: the tree size "
                                 "of its newest cosignature", labels=["witness"])
        for name, state, n in g.witnesses:
            status.add_metric([name], WITNESS_STATES.get(state, WITNESS_UNKNOWN))
            size.add_metric([name], n)
        yield status
        yield size


class ServiceMetrics:
    """The `run` service's registry. `committed` is called once per commit (on the event
    loop); `exposition()` renders everything, the gauges read from `gauges()` then."""

    def __init__(self, gauges: Callable[[], LiveGauges] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.anchored = Counter(f"{NS}_readings_anchored", "Readings anchored (committed to "
                                "the ledger) since the service started", registry=r)
        self.refused = Counter(f"{NS}_readings_refused", "Messages refused since the service "
                               "started, by reason (the names of `ledger status`)", ["reason"],
                               registry=r)
        self.batches = Counter(f"{NS}_batches", "Batch commits that anchored readings",
                               registry=r)
        self.batch_size = Histogram(f"{NS}_batch_readings", "Readings per committed batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.commit_seconds = Histogram(f"{NS}_commit_seconds", "Time of one commit (one "
                                        "SQLite transaction, signing its checkpoint)",
                                        buckets=COMMIT_BUCKETS, registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, fds
        if gauges is not None:
            r.register(_LiveCollector(gauges))  # type: ignore[arg-type]
        self.last_commit_ms = 0.0
        self.last_batch = 0

    def committed(self, readings: int, seconds: float, rejected: Mapping[str, int]) -> None:
        """One commit: its anchored readings, its duration and the rejections it stored."""
        self.commit_seconds.observe(seconds)
        self.last_commit_ms = seconds * 1000
        if readings:
            self.anchored.inc(readings)
            self.batches.inc()
            self.batch_size.observe(readings)
            self.last_batch = readings
        for reason, n in rejected.items():
            self.refused.labels(reason).inc(n)

    def snapshot(self) -> dict[str, Any]:
        """The figures the console shows (JSON-ready), read from the metrics themselves."""
        out: dict[str, Any] = {"refused": {}, "commit_count": 0, "commit_seconds_sum": 0.0}
        for m in self.registry.collect():
            for s in m.samples:
                if s.name == f"{NS}_readings_anchored_total":
                    out["anchored"] = int(s.value)
                elif s.name == f"{NS}_readings_refused_total":
                    out["refused"][s.labels["reason"]] = int(s.value)
                elif s.name == f"{NS}_commit_seconds_count":
                    out["commit_count"] = int(s.value)
                elif s.name == f"{NS}_commit_seconds_sum":
                    out["commit_seconds_sum"] = float(s.value)
                elif s.name.startswith(NS + "_") and not s.labels and s.name not in out:
                    out[s.name[len(NS) + 1:]] = s.value
                elif s.name == "process_resident_memory_bytes":
                    out["resident_memory_bytes"] = s.value
        out["last_commit_ms"] = self.last_commit_ms
        out["last_batch"] = self.last_batch
        return out

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def ledger_exposition(f: LedgerFigures) -> bytes:
    """The ledger's totals in the exposition format (a registry made for this scrape)."""
    r = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(f"{NS}_ledger_{name}", doc, registry=r).set(value)

    gauge("readings", "Readings in the ledger", f.readings)
    gauge("size", "Ledger entries", f.entries)
    gauge("devices", "Registered devices (active and revoked)", f.devices)
    gauge("revoked_devices", "Revoked devices", f.revoked)
    gauge("checkpoint_size", "Tree size of the newest signed checkpoint", f.checkpoint_size)
    if f.checkpoint_time_ms is not None:
        gauge("checkpoint_timestamp_seconds", "Time of the newest ledger entry (Unix)",
              f.checkpoint_time_ms / 1000)
    rej = Gauge(f"{NS}_ledger_refused", "Refusals stored in the ledger, by reason",
                ["reason"], registry=r)
    for reason, n in sorted(f.rejected.items()):
        rej.labels(reason).set(n)
    ev = Gauge(f"{NS}_ledger_security_events", "Security events stored, by kind", ["kind"],
               registry=r)
    for kind, n in sorted(f.events.items()):
        ev.labels(kind).set(n)
    gauge("cosignatures", "Witness cosignatures gathered for the newest checkpoint",
          f.cosignatures)
    gauge("witnesses", "Witnesses the gateway has a status for (0: none)", len(f.witnesses))
    ws = Gauge(f"{NS}_ledger_witness_state", "Per witness: 1 for its state as the gateway "
               "last saw it", ["witness", "state"], registry=r)
    wsize = Gauge(f"{NS}_ledger_witness_cosigned_size", "Per witness: the tree size it last "
                  "cosigned", ["witness"], registry=r)
    wt = Gauge(f"{NS}_ledger_witness_seen_timestamp_seconds", "Per witness: when the "
               "gateway last heard from it (Unix)", ["witness"], registry=r)
    for w in f.witnesses:
        ws.labels(str(w["witness"]), str(w["state"])).set(1)
        wsize.labels(str(w["witness"])).set(int(w["size"]))
        wt.labels(str(w["witness"])).set(int(w["t"]) / 1000)
    return generate_latest(r)
