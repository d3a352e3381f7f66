"""The load: a fleet of simulated devices with pre-signed readings, and the load-engine worker
processes that publish them (gateway/sim/loadgen.py, the engine of
`iot-anchor simulate --engine cpython`).

The devices are spread round-robin over worker processes; each is one asyncio loop holding one
TCP connection per device, with loadgen's PUBACK window and outbox (a reading not acknowledged
as anchored after `ack_timeout` is published again).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import multiprocessing
import resource
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from gateway.errors import AnchorError
from gateway.fleet import registry
from gateway.sim import loadgen
from gateway.storage import downlink_keyfile
from gateway.storage.store import Store
from gateway.wire.signer import DeviceSigner

Readings = list[tuple[int, bytes]]  # (seq, COSE message), in seq order


@dataclass
class Fleet:
    """D devices, their pre-signed readings, and a data dir template with them registered."""

    devices: list[tuple[str, Readings]]  # (id, readings)
    template: Path
    sign_s: float
    register_s: float
    mac_keys: dict[str, bytes]  # id -> downlink MAC key under the template's downlink key

    @property
    def readings(self) -> int:
        return sum(len(m) for _, m in self.devices)


def _presign(job: tuple[str, bytes, int, int]) -> tuple[str, Readings]:
    dev, secret, index, count = job
    state = loadgen.DeviceState(dev, secret)
    return dev, loadgen.presign(state, index, count)


def make_fleet(n_devices: int, per_device: int, workdir: Path, procs: int,
               rules: str | None = None) -> Fleet:
    """Sign `per_device` readings for each of `n_devices` new devices on `procs` processes,
    and register the devices in a new data dir under `workdir` (the phases copy it), with
    the rule file `rules` applied when given."""
    ids = [f"load-{i:04d}" for i in range(n_devices)]
    signers = [DeviceSigner.generate(dev) for dev in ids]
    jobs = [(s.dev, s.secret, i, per_device) for i, s in enumerate(signers)]
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(
            procs, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
        devices = pool.map(_presign, jobs, chunksize=max(1, len(jobs) // (4 * procs)))
    sign_s = time.perf_counter() - t0
    template = workdir / f"template-{n_devices}"
    t0 = time.perf_counter()
    store, _vkey = Store.create(template)
    with store:
        for s in signers:
            registry.add(store, s.dev, s.public_key)
        if rules is not None:
            store.apply_rules(store.load_signer(), rules,
                              hashlib.sha256(rules.encode()).digest())
    gw = downlink_keyfile.public_bytes(downlink_keyfile.create(template))
    macs = {s.dev: loadgen.mac_key_for(s.secret, s.dev, gw) for s in signers}
    return Fleet(devices, template, sign_s, time.perf_counter() - t0, macs)


class StartAt:
    """loadgen's start signal (it calls `go.wait(timeout)` once connected): every worker
    starts at the same wall-clock time, after all its connections are up."""

    def __init__(self, at: float) -> None:
        self.at = at

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(max(0.0, self.at - time.time()))
        return True


def load_worker(cfg: loadgen.EngineConfig, share: list[tuple[str, Readings, bytes]],
                go_at: float, tx: Connection) -> None:
    """One load process: loadgen's fleet driver over this share's pre-signed readings; sends
    its counts (or {"error": ...}) through `tx`."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's clean-up handler
    try:
        devs = [loadgen.SimDevice(dev, msgs, mac_key=mac) for dev, msgs, mac in share]
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        asyncio.run(loadgen.drive(cfg, devs, StartAt(go_at)))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        sent = [t for d in devs for t in d.sent_at.values()]
        tx.send({
            "produced": sum(d.produced for d in devs),
            "acked": sum(len(d.acked) for d in devs),
            "republished": sum(d.republished for d in devs),
            "connects": sum(d.connects for d in devs),
            "latencies": [x for d in devs for x in d.latencies],
            "first": min(sent) if sent else None,
            "last": max(sent) if sent else None,
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        })
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        tx.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        tx.close()


@dataclass
class LoadResult:
    produced: int
    acked: int
    republished: int
    latencies_ms: list[float]
    first: float  # monotonic time of the first publish
    last: float  # monotonic time of the last reading's first publish
    cpu_s: float  # user + system of the worker processes


def run_load(fleet: Fleet, broker: str, procs: int, interval: float, drain: float,
             ack_timeout: float, per_device: int | None = None) -> LoadResult:
    """Publish the pre-signed readings, the first `per_device` of each device (default all);
    interval 0 = as fast as PUBACKs allow."""
    procs = max(1, min(procs, len(fleet.devices)))
    shares: list[list[tuple[str, Readings, bytes]]] = [[] for _ in range(procs)]
    for i, (dev, msgs) in enumerate(fleet.devices):
        shares[i % procs].append((dev, msgs[:per_device] if per_device else msgs,
                                  fleet.mac_keys[dev]))
    per_device = max(len(m) for share in shares for _, m, _ in share)
    duration = math.inf if interval <= 0 else (per_device + 1) * interval
    cfg = loadgen.EngineConfig(broker, interval=interval, duration=duration,
                               drain_timeout=drain, ack_timeout=ack_timeout)
    ctx = multiprocessing.get_context("fork")
    go_at = time.time() + 2.0 + len(fleet.devices) / 1000
    pipes, workers = [], []
    for share in shares:
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=load_worker, args=(cfg, share, go_at, tx), daemon=True)
        p.start()
        tx.close()
        pipes.append(rx)
        workers.append(p)
    results = []
    try:
        for rx in pipes:
            r = rx.recv()
            if "error" in r:
                raise AnchorError(f"load worker failed: {r['error']}",
                                  "check the machine's limits (ulimit -n) and the broker log")
            results.append(r)
    except EOFError as e:
        raise AnchorError("a load worker process died",
                          "run with fewer --devices or look at the machine's memory") from e
    finally:
        for p in workers:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    firsts = [r["first"] for r in results if r["first"] is not None]
    lasts = [r["last"] for r in results if r["last"] is not None]
    return LoadResult(
        produced=sum(r["produced"] for r in results),
        acked=sum(r["acked"] for r in results),
        republished=sum(r["republished"] for r in results),
        latencies_ms=[x * 1000 for r in results for x in r["latencies"]],
        first=min(firsts) if firsts else math.nan,
        last=max(lasts) if lasts else math.nan,
        cpu_s=sum(r["cpu_s"] for r in results),
    )
