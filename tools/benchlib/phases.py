"""The measured phases of `make bench`, each with a fresh private Mosquitto:

- `baseline_phase`: a bare paho subscriber (tools/bench_baseline.py) counts a burst;
- `gateway_phase`: `iot-anchor run` on a fresh copy of the fleet's data dir takes a burst
  (`paced=False`) or the whole load at the offered rate (`paced=True`);
- `measure_fleet_size`: one fleet size, pre-signed once, through the three phases --runs times.

Each phase returns a dict of its figures (`report.summary_figures` reads them by key).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.console_watch import ConsoleWatcher
from benchlib.gateway_process import (
    Batches,
    start_gateway,
    start_mirror,
    stop_gateway,
    wait_connected,
)
from benchlib.load import Fleet, make_fleet, run_load
from benchlib.procfs import machine_busy_s, proc_cpu_s, status_mb, tree_cpu_s
from benchlib.script import ROOT, log
from benchlib.stats import per_second, percentile, us_per
from gateway.errors import AnchorError
from gateway.fleet.brokerconf import AUTOSAVE_INTERVAL_S
from gateway.sim.broker import PrivateBroker, free_port
from gateway.sim.simulate import stop_process
from gateway.storage.store import DB_NAME, VKEY_NAME, Store

# The devices' outbox: a reading not acknowledged after this long is published again (the
# firmware's default), so a lost ack costs a republish, as on a real fleet.
ACK_TIMEOUT = 30.0
# CLOCK_REALTIME - CLOCK_MONOTONIC: turns the engine's monotonic stamps into log times.
WALL_MINUS_MONO = time.time() - time.monotonic()


@dataclass
class BenchOptions:
    """The command line's settings that every phase reads."""

    procs: int
    batch_interval: float
    batch_max: int
    rate: float
    workdir: Path
    burst: int = 100_000  # readings in the burst phases (at most all that were signed)
    burst_per_device: int | None = None  # set per fleet size
    console: bool = False  # the gateway with --http, its console watched (console_watch)
    mirror: bool = False  # paced phase: `run --http` with `iot-anchor mirror --follow` on it
    rules: str | None = None  # a rule file's text, applied to the gateway's data dir


class PhaseMeter:
    """The broker's CPU time, the whole machine's busy CPU time and the wall time, from
    construction to `stop()`; what the rest of the machine used follows from them."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.broker = broker
        self.broker_s = self.machine_s = self.wall_s = 0.0
        self._broker0 = self._broker_cpu_s()
        self._machine0, self._wall0 = machine_busy_s(), time.monotonic()

    def _broker_cpu_s(self) -> float:
        return proc_cpu_s(self.broker.proc.pid) if self.broker.proc else 0.0

    def stop(self) -> None:
        self.broker_s = self._broker_cpu_s() - self._broker0
        self.machine_s = machine_busy_s() - self._machine0
        self.wall_s = time.monotonic() - self._wall0

    def others_cores(self, ours_s: float) -> float:
        """Cores used by processes outside the bench (other users of the machine), given the
        CPU seconds the bench's own processes other than the broker used."""
        return per_second(max(0.0, self.machine_s - ours_s - self.broker_s), self.wall_s)

    def machine_cores(self) -> float:
        return per_second(self.machine_s, self.wall_s)


def private_broker(options: BenchOptions, tag: str) -> PrivateBroker:
    """A fresh Mosquitto saving its persistence as `iot-anchor broker-config`'s config does."""
    return PrivateBroker(workdir=options.workdir / f"broker-{tag}",
                         autosave_interval=AUTOSAVE_INTERVAL_S)


def baseline_phase(fleet: Fleet, options: BenchOptions) -> dict[str, Any]:
    """The bare paho subscriber counts the burst."""
    n = sum(len(msgs[:options.burst_per_device]) for _, msgs in fleet.devices)
    with private_broker(options, "baseline") as broker:
        sub = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "bench_baseline.py"), "--broker", broker.url,
             "--expect", str(n)], stdout=subprocess.PIPE, text=True)
        try:
            assert sub.stdout is not None
            if sub.stdout.readline().strip() != "ready":
                raise AnchorError("the baseline subscriber did not start",
                                  "run tools/bench_baseline.py by hand to see why")
            meter = PhaseMeter(broker)
            load = run_load(fleet, broker.url, options.procs, 0.0, 0.0, 1e9,
                            options.burst_per_device)
            out, _ = sub.communicate(timeout=600)
            meter.stop()
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    res = json.loads(out.strip().splitlines()[-1])
    return {
        "received": res["received"],
        "published": load.produced,
        "per_s": per_second(res["received"] - 1, res["last"] - res["first"]),
        "per_s_e2e": per_second(res["received"], res["last"] - load.first),
        "publish_per_s": per_second(load.produced, load.last - load.first),
        "consumer_cpu_s": res["cpu_s"],
        "consumer_us_per_msg": us_per(res["cpu_s"], res["received"]),
        "broker_cpu_s": meter.broker_s,
        "engine_cpu_s": load.cpu_s,
        "others_cores": meter.others_cores(res["cpu_s"] + load.cpu_s),
    }


def gateway_phase(fleet: Fleet, options: BenchOptions, paced: bool,
                  tag: str) -> dict[str, Any]:
    """The gateway takes the burst, or (paced) every reading at the offered rate."""
    n = fleet.readings
    data = options.workdir / f"data-{tag}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(fleet.template, data)
    logf = options.workdir / f"gateway-{tag}.log"
    interval = len(fleet.devices) / options.rate if paced else 0.0
    mirrored = paced and options.mirror
    port = free_port() if mirrored or options.console else 0  # run --http on it
    mirror_proc = None
    mlog = None
    mirror_data = options.workdir / f"mirror-{tag}"
    mirror_figures: dict[str, Any] = {}
    with private_broker(options, tag) as broker, open(logf, "w") as log_out:
        gw = start_gateway(data, broker.url, options.batch_interval, options.batch_max, log_out,
                           ("--http", f"127.0.0.1:{port}") if port else ())
        watch = None
        try:
            wait_connected(gw, logf)
            if options.console:
                watch = ConsoleWatcher(f"http://127.0.0.1:{port}")
            if mirrored:
                vkey = (data / VKEY_NAME).read_text().strip()
                mlog = open(options.workdir / f"mirror-{tag}.log", "w")
                mirror_proc = start_mirror(f"http://127.0.0.1:{port}", mirror_data, vkey, mlog)
            cpu_before = tree_cpu_s(gw.pid)
            meter = PhaseMeter(broker)
            load = run_load(fleet, broker.url, options.procs, interval,
                            drain=max(120.0, n / 1000), ack_timeout=ACK_TIMEOUT,
                            per_device=None if paced else options.burst_per_device)
            cpus = tree_cpu_s(gw.pid, cpu_before)
            cpu = sum(cpus.values())
            hwm = {p: status_mb(p, "VmHWM") for p in cpus}
            rss = sum(hwm.values())
            workers_rss = rss - hwm[gw.pid]
            meter.stop()
            if mirror_proc is not None:
                mirror_figures = _mirror_catch_up(data, mirror_data, load.last)
        finally:
            watched = watch.stop() if watch is not None else {}
            if mirror_proc is not None:
                stop_process(mirror_proc, 10.0, signal.SIGTERM)
            if mlog is not None:
                mlog.close()
            rss_with_shutdown = stop_gateway(gw, logf)
    rss_with_shutdown += workers_rss
    batches = Batches.parse(logf.read_text())
    with Store.open(data, readonly=True) as store:
        anchored = store.reading_count()
    span = batches.last_wall - (load.first + WALL_MINUS_MONO)
    latencies = sorted(load.latencies_ms)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(mirror_data, ignore_errors=True)
    return {
        "published": load.produced,
        "anchored": anchored,
        "acknowledged": load.acked,
        "republished": load.republished,
        "per_s": batches.steady_rate(options.batch_max),
        "per_s_e2e": per_second(anchored, span),
        "offered_per_s": options.rate if paced else None,
        "publish_per_s": per_second(load.produced, load.last - load.first),
        "span_s": span,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": latencies[-1] if latencies else None,
        "cpu_s": cpu,
        "cpu_cores": per_second(cpu, span),
        "cpu_us_per_reading": us_per(cpu, anchored),
        "rss_mb": rss,
        "rss_mb_with_shutdown": rss_with_shutdown,
        "rss_mb_workers": workers_rss,
        "cpu_s_workers": cpu - cpus[gw.pid],
        "batches": len(batches.sizes),
        "batch_mean": statistics.fmean(batches.sizes) if batches.sizes else 0,
        "batch_max": max(batches.sizes, default=0),
        "commit_ms_mean": statistics.fmean(batches.commit_ms) if batches.commit_ms else 0,
        "commit_ms_max": max(batches.commit_ms, default=0),
        "broker_cpu_s": meter.broker_s,
        "broker_us_per_reading": us_per(meter.broker_s, anchored),
        "engine_cpu_s": load.cpu_s,
        "others_cores": meter.others_cores(cpu + load.cpu_s),
        "machine_cores": meter.machine_cores(),
        "log": str(logf),
        **watched,
        **mirror_figures,
    }


def _mirror_catch_up(data: Path, mirror_data: Path, load_end: float) -> dict[str, Any]:
    """Wait (60 s at most) until the mirror holds every reading the gateway anchored; its
    count and how long after the load's last publish it got there."""
    deadline = time.monotonic() + 60
    mirrored = 0
    while True:
        with Store.open(data, readonly=True) as g:
            want = g.reading_count()
        if (mirror_data / DB_NAME).exists():
            with Store.open(mirror_data, readonly=True) as m:
                mirrored = m.reading_count()
        if mirrored >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {"mirror_readings": mirrored, "mirror_lag_s": time.monotonic() - load_end}


@dataclass
class FleetSizeRuns:
    """One fleet size's phases, run after run (each run: "baseline", "burst", "paced", and
    the burst's "ratio" to the baseline)."""

    devices: int
    per_device: int  # readings signed per device
    duration: float  # of the paced phase, s
    per_run: list[dict[str, Any]]
    loadavg_start: str  # the 1-minute load average before the first run


def measure_fleet_size(n_devices: int, options: BenchOptions, duration: float,
                       runs: int) -> FleetSizeRuns:
    """Sign rate x duration readings over `n_devices` devices, then run the three phases
    `runs` times. Sets options.burst_per_device for this fleet size."""
    total = int(options.rate * duration)
    per_device = max(1, math.ceil(total / n_devices))
    log(f"bench: {n_devices} devices x {per_device} readings = {n_devices * per_device}, "
        f"load over {options.procs} processes, {runs} runs")
    fleet = make_fleet(n_devices, per_device, options.workdir, options.procs, options.rules)
    options.burst_per_device = max(1, min(per_device, math.ceil(options.burst / n_devices)))
    log(f"  pre-signed {fleet.readings} readings in {fleet.sign_s:.1f} s; registered "
        f"{n_devices} devices in {fleet.register_s:.1f} s")
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[0]
    per_run = []
    for r in range(runs):
        base = baseline_phase(fleet, options)
        log(f"  run {r + 1}: baseline {base['per_s']:,.0f} msgs/s "
            f"(engine published {base['publish_per_s']:,.0f}/s)")
        burst = gateway_phase(fleet, options, paced=False, tag=f"{n_devices}-{r}-burst")
        log(f"  run {r + 1}: gateway burst {burst['per_s']:,.0f} anchored/s "
            f"(ratio {burst['per_s'] / base['per_s']:.2f}), {burst['cpu_us_per_reading']:.0f} "
            f"us CPU/reading, peak RSS {burst['rss_mb']:.0f} MB")
        paced = gateway_phase(fleet, options, paced=True, tag=f"{n_devices}-{r}-paced")
        log(f"  run {r + 1}: gateway paced at {options.rate:,.0f}/s (the engine published "
            f"{paced['publish_per_s']:,.0f}/s): {paced['per_s']:,.0f} "
            f"anchored/s over {paced['span_s']:.1f} s, latency p50 "
            f"{paced['latency_p50_ms']:.0f} ms p99 {paced['latency_p99_ms']:.0f} ms, "
            f"peak RSS {paced['rss_mb']:.0f} MB"
            + (f"; a mirror following held {paced['mirror_readings']:,} readings "
               f"{paced['mirror_lag_s']:.1f} s after the last publish"
               if "mirror_readings" in paced else ""))
        per_run.append({"baseline": base, "burst": burst, "paced": paced,
                        "ratio": burst["per_s"] / base["per_s"]})
    return FleetSizeRuns(n_devices, per_device, duration, per_run, loadavg)
