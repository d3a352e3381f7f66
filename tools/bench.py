"""`make bench`: the gateway at fleet scale, side by side with the bare MQTT transport.

    .venv/bin/python tools/bench.py [--devices 1000] [--duration 20] [--rate 5000] [--runs 3]
    .venv/bin/python tools/bench.py --duration 60 --rate 10000     (the sustained-10k/s goal)
    .venv/bin/python tools/bench.py --sweep 100,1000,5000 [--plot docs/bench-devices.png]
    .venv/bin/python tools/bench.py --ledger 1000000        (tools/bench_ledger.py)

Everything runs on this machine: a private Mosquitto (gateway/broker.py, a fresh one per phase),
the CPython load engine of `iot-anchor simulate --engine cpython` (gateway/loadgen.py: its
signer and its asyncio fleet driver), and the consumer under test. The load is D simulated
devices with N = rate x duration readings pre-signed once (N / D each, real ES256 signatures,
the firmware's bytes), published at QoS 1. The devices are spread round-robin over --procs
worker processes (default 2, one per core); each worker is one asyncio loop holding one TCP
connection per device (client id = device id), with up to 16 un-PUBACKed publishes per device.

Each run has three phases, back to back, each with a fresh broker:

1. baseline, burst: a bare paho subscriber at QoS 1 that only counts (tools/bench_baseline.py);
   the engine publishes --burst of the readings (default 100,000, the first ones of every
   device) as fast as the broker PUBACKs them.
   baseline msgs/s = messages / (last counted - first counted).
2. gateway, burst: the real gateway (`iot-anchor run` as a subprocess, fresh data dir with the
   D devices registered), the same readings published the same way.
   anchored readings/s = readings committed from the first to the last full batch (closed by
   --batch-max) / the time between those commits, from the gateway's log: the rate once it
   runs, as the baseline's is. ratio = anchored / baseline. The engine waits until every
   reading is acknowledged. Both are also given end to end (from the first publish to the last
   message counted / the last commit), which adds the start and the last batch's wait.
3. gateway, paced: the same N readings offered at a steady --rate (each device publishes every
   D / rate seconds) for --duration seconds: the fleet in steady state. publish->anchored
   latency is measured here, in the load engine: from a reading's first publish to the arrival
   of the `anchor/<id>/ack` that covers it (both clocks are CLOCK_MONOTONIC on one machine).
   A burst measures the queue, not the gateway, so latencies from phase 2 are shown but not
   used for the latency figures.

Gateway CPU comes from /proc/<pid>/stat (utime + stime) and its peak RSS from VmHWM in
/proc/<pid>/status, both read before the gateway is stopped, for the gateway process and its
verifier worker processes together (the RSS as the sum of their peaks, which counts the shared
libraries once per process: an upper bound); batch statistics come from the
gateway's INFO line per batch ("batch: N readings, ... commit X ms"). Each figure is the median
over --runs runs. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.errors import AnchorError  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.fleet.brokerconf import AUTOSAVE_INTERVAL_S  # noqa: E402
from gateway.sim import loadgen  # noqa: E402
from gateway.sim.broker import PrivateBroker  # noqa: E402
from gateway.sim.simulate import stop_process  # noqa: E402
from gateway.storage.store import Store  # noqa: E402
from gateway.wire.signer import DeviceSigner  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
BATCH_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO iot_anchor\.service: batch: (\d+) readings, "
    r"entry \S+, root \S+, commit ([\d.]+) ms"
)
# The devices' outbox: a reading not acknowledged after this long is published again (the
# firmware's default), so a lost ack costs a republish, as on a real fleet.
ACK_TIMEOUT = 30.0
# CLOCK_REALTIME - CLOCK_MONOTONIC: turns the engine's monotonic stamps into log times.
WALL_MINUS_MONO = time.time() - time.monotonic()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    """D devices, their pre-signed readings, and a data dir template with them registered."""

    devices: list[tuple[str, list[tuple[int, bytes]]]]  # (id, [(seq, cose), ...])
    template: Path
    sign_s: float
    register_s: float

    @property
    def readings(self) -> int:
        return sum(len(m) for _, m in self.devices)


def _presign(job: tuple[str, bytes, int, int]) -> tuple[str, list[tuple[int, bytes]]]:
    dev, secret, index, count = job
    state = loadgen.DeviceState(dev, secret)
    return dev, loadgen.presign(state, index, count)


def make_fleet(n_devices: int, per_device: int, workdir: Path, procs: int) -> Fleet:
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
    return Fleet(devices, template, sign_s, time.perf_counter() - t0)


# --------------------------------------------------------------------------- the load engine


class _StartAt:
    """loadgen's start signal (it calls `go.wait(timeout)` once connected): every worker
    starts at the same wall-clock time, after all its connections are up."""

    def __init__(self, at: float) -> None:
        self.at = at

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(max(0.0, self.at - time.time()))
        return True


def _load_worker(cfg: loadgen.EngineConfig, share: list[tuple[str, list[tuple[int, bytes]]]],
                 go_at: float, tx: Any) -> None:
    """One load process: loadgen's fleet driver over this share's pre-signed readings."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's clean-up handler
    try:
        devs = [loadgen.SimDevice(dev, msgs) for dev, msgs in share]
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        asyncio.run(loadgen.drive(cfg, devs, _StartAt(go_at)))
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
    first: float  # monotonic
    last: float
    cpu_s: float


def run_load(fleet: Fleet, broker: str, procs: int, interval: float, drain: float,
             ack_timeout: float, per_device: int | None = None) -> LoadResult:
    """Publish the pre-signed readings, the first `per_device` of each device (default all);
    interval 0 = as fast as PUBACKs allow."""
    procs = max(1, min(procs, len(fleet.devices)))
    shares: list[list[tuple[str, list[tuple[int, bytes]]]]] = [[] for _ in range(procs)]
    for i, (dev, msgs) in enumerate(fleet.devices):
        shares[i % procs].append((dev, msgs[:per_device] if per_device else msgs))
    per_device = max(len(m) for share in shares for _, m in share)
    duration = math.inf if interval <= 0 else (per_device + 1) * interval
    cfg = loadgen.EngineConfig(broker, interval=interval, duration=duration,
                               drain_timeout=drain, ack_timeout=ack_timeout)
    ctx = multiprocessing.get_context("fork")
    go_at = time.time() + 2.0 + len(fleet.devices) / 1000
    pipes, workers = [], []
    for share in shares:
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_load_worker, args=(cfg, share, go_at, tx), daemon=True)
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


# --------------------------------------------------------------------------- processes


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_hwm_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return math.nan


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the gateway's verifier workers)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree_cpu_s(pid: int, base: dict[int, float] | None = None) -> dict[int, float]:
    """CPU seconds per process of `pid` and its children (minus `base`, per pid)."""
    out = {}
    for p in [pid, *children(pid)]:
        try:
            out[p] = proc_cpu_s(p) - (base or {}).get(p, 0.0)
        except OSError:
            pass
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def gateway_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "iot-anchor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway"]


STOPPED_RSS_RE = re.compile(r"stopped: .* peak RSS (\d+) MB")


def stop(proc: subprocess.Popen[Any], logf: Path, grace: float = 30.0) -> float:
    """SIGTERM (then SIGKILL after `grace`); returns the gateway's lifetime peak RSS in MB,
    shutdown included, from its last log line (its own VmHWM; not wait4's ru_maxrss, which
    keeps the size of this big benchmark process that forked it), NaN if it gave none."""
    stop_process(proc, grace, signal.SIGTERM)
    m = STOPPED_RSS_RE.search(logf.read_text())
    return float(m.group(1)) if m else math.nan


@dataclass
class Batches:
    sizes: list[int] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # log time of each batch's commit
    last_wall: float = math.nan  # log time of the last batch with readings

    def steady_rate(self, batch_max: int) -> float:
        """Readings/s between the first and the last full batch (closed by --batch-max):
        the rate once the pipeline runs, without the start and the last partial batch's wait
        for the batch interval. NaN with fewer than 3 full batches."""
        full = [i for i, n in enumerate(self.sizes) if n >= batch_max]
        if len(full) < 3:
            return math.nan
        a, b = full[0], full[-1]
        span = self.walls[b] - self.walls[a]
        return sum(self.sizes[a + 1:b + 1]) / span if span > 0 else math.nan

    @classmethod
    def parse(cls, text: str) -> Batches:
        b = cls()
        for line in text.splitlines():
            m = BATCH_RE.match(line)
            if not m or int(m.group(2)) == 0:
                continue
            b.sizes.append(int(m.group(2)))
            b.commit_ms.append(float(m.group(3)))
            b.last_wall = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            b.walls.append(b.last_wall)
        return b


# --------------------------------------------------------------------------- phases


@dataclass
class Opts:
    procs: int
    batch_interval: float
    batch_max: int
    rate: float
    workdir: Path
    burst: int = 100_000  # readings in the burst phases (at most all that were signed)
    burst_per_device: int | None = None  # set per fleet size


def phase_baseline(fleet: Fleet, o: Opts) -> dict[str, Any]:
    n = sum(len(m[:o.burst_per_device]) for _, m in fleet.devices)
    with PrivateBroker(workdir=o.workdir / "broker-baseline",
                       autosave_interval=AUTOSAVE_INTERVAL_S) as broker:
        sub = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "bench_baseline.py"), "--broker", broker.url,
             "--expect", str(n)], stdout=subprocess.PIPE, text=True)
        try:
            assert sub.stdout is not None
            if sub.stdout.readline().strip() != "ready":
                raise AnchorError("the baseline subscriber did not start",
                                  "run tools/bench_baseline.py by hand to see why")
            b0 = proc_cpu_s(broker.proc.pid) if broker.proc else 0.0
            m0, w0 = machine_busy_s(), time.monotonic()
            load = run_load(fleet, broker.url, o.procs, 0.0, 0.0, 1e9, o.burst_per_device)
            out, _ = sub.communicate(timeout=600)
            b1 = proc_cpu_s(broker.proc.pid) if broker.proc else 0.0
            m1, w1 = machine_busy_s(), time.monotonic()
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    res = json.loads(out.strip().splitlines()[-1])
    span = res["last"] - load.first
    steady = res["last"] - res["first"]
    return {
        "received": res["received"],
        "published": load.produced,
        "per_s": (res["received"] - 1) / steady if steady > 0 else math.nan,
        "per_s_e2e": res["received"] / span if span > 0 else math.nan,
        "publish_per_s": load.produced / (load.last - load.first),
        "consumer_cpu_s": res["cpu_s"],
        "consumer_us_per_msg": 1e6 * res["cpu_s"] / max(1, res["received"]),
        "broker_cpu_s": b1 - b0,
        "engine_cpu_s": load.cpu_s,
        "others_cores": others(m1 - m0, res["cpu_s"] + (b1 - b0) + load.cpu_s, w1 - w0),
    }


def others(machine_s: float, ours_s: float, wall_s: float) -> float:
    """Cores used by processes outside the bench (other users of the machine) in a phase."""
    return max(0.0, machine_s - ours_s) / wall_s if wall_s > 0 else math.nan


def phase_gateway(fleet: Fleet, o: Opts, paced: bool, tag: str) -> dict[str, Any]:
    n = fleet.readings
    data = o.workdir / f"data-{tag}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(fleet.template, data)
    logf = o.workdir / f"gateway-{tag}.log"
    interval = len(fleet.devices) / o.rate if paced else 0.0
    with PrivateBroker(workdir=o.workdir / f"broker-{tag}",
                       autosave_interval=AUTOSAVE_INTERVAL_S) as broker, open(logf, "w") as lf:
        gw = subprocess.Popen(
            [*gateway_cmd(), "run", "--data", str(data), "--broker", broker.url,
             "--batch-interval", f"{o.batch_interval:g}", "--batch-max", str(o.batch_max)],
            stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while "connected to" not in logf.read_text():
                if gw.poll() is not None or time.monotonic() > deadline:
                    raise AnchorError(f"the gateway did not connect (exit {gw.poll()})",
                                      f"see its log {logf}")
                time.sleep(0.1)
            c0 = tree_cpu_s(gw.pid)
            b0 = proc_cpu_s(broker.proc.pid) if broker.proc else 0.0
            m0, w0 = machine_busy_s(), time.monotonic()
            load = run_load(fleet, broker.url, o.procs, interval,
                            drain=max(120.0, n / 1000), ack_timeout=ACK_TIMEOUT,
                            per_device=None if paced else o.burst_per_device)
            cpus = tree_cpu_s(gw.pid, c0)
            cpu = sum(cpus.values())
            hwm = {p: proc_hwm_mb(p) for p in cpus}
            rss = sum(hwm.values())
            workers_rss = rss - hwm[gw.pid]
            b1 = proc_cpu_s(broker.proc.pid) if broker.proc else 0.0
            m1, w1 = machine_busy_s(), time.monotonic()
        finally:
            rss_life = stop(gw, logf) + workers_rss
    batches = Batches.parse(logf.read_text())
    with Store.open(data, readonly=True) as st:
        anchored = st.reading_count()
    first_wall = load.first + WALL_MINUS_MONO
    span = batches.last_wall - first_wall
    lat = sorted(load.latencies_ms)
    shutil.rmtree(data, ignore_errors=True)
    return {
        "published": load.produced,
        "anchored": anchored,
        "acknowledged": load.acked,
        "republished": load.republished,
        "per_s": batches.steady_rate(o.batch_max),
        "per_s_e2e": anchored / span if span > 0 else math.nan,
        "offered_per_s": o.rate if paced else None,
        "publish_per_s": load.produced / (load.last - load.first)
        if load.last > load.first else math.nan,
        "span_s": span,
        "latency_p50_ms": pct(lat, 50),
        "latency_p99_ms": pct(lat, 99),
        "latency_max_ms": lat[-1] if lat else None,
        "cpu_s": cpu,
        "cpu_cores": cpu / span if span > 0 else math.nan,
        "cpu_us_per_reading": 1e6 * cpu / max(1, anchored),
        "rss_mb": rss,
        "rss_mb_with_shutdown": rss_life,
        "rss_mb_workers": workers_rss,
        "cpu_s_workers": cpu - cpus[gw.pid],
        "batches": len(batches.sizes),
        "batch_mean": statistics.fmean(batches.sizes) if batches.sizes else 0,
        "batch_max": max(batches.sizes, default=0),
        "commit_ms_mean": statistics.fmean(batches.commit_ms) if batches.commit_ms else 0,
        "commit_ms_max": max(batches.commit_ms, default=0),
        "broker_cpu_s": b1 - b0,
        "broker_us_per_reading": 1e6 * (b1 - b0) / max(1, anchored),
        "engine_cpu_s": load.cpu_s,
        "others_cores": others(m1 - m0, cpu + (b1 - b0) + load.cpu_s, w1 - w0),
        "machine_cores": (m1 - m0) / (w1 - w0) if w1 > w0 else math.nan,
        "log": str(logf),
    }


def pct(xs: Sequence[float], p: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def median(values: Iterable[Any]) -> Any:
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- one fleet size


def bench_devices(n_devices: int, o: Opts, duration: float, runs: int) -> dict[str, Any]:
    total = int(o.rate * duration)
    per_device = max(1, math.ceil(total / n_devices))
    log(f"bench: {n_devices} devices x {per_device} readings = {n_devices * per_device}, "
        f"load over {o.procs} processes, {runs} runs")
    fleet = make_fleet(n_devices, per_device, o.workdir, o.procs)
    o.burst_per_device = max(1, min(per_device, math.ceil(o.burst / n_devices)))
    log(f"  pre-signed {fleet.readings} readings in {fleet.sign_s:.1f} s; registered "
        f"{n_devices} devices in {fleet.register_s:.1f} s")
    loadavg = open("/proc/loadavg").read().split()[0]
    per_run = []
    for r in range(runs):
        base = phase_baseline(fleet, o)
        log(f"  run {r + 1}: baseline {base['per_s']:,.0f} msgs/s "
            f"(engine published {base['publish_per_s']:,.0f}/s)")
        burst = phase_gateway(fleet, o, paced=False, tag=f"{n_devices}-{r}-burst")
        log(f"  run {r + 1}: gateway burst {burst['per_s']:,.0f} anchored/s "
            f"(ratio {burst['per_s'] / base['per_s']:.2f}), {burst['cpu_us_per_reading']:.0f} "
            f"us CPU/reading, peak RSS {burst['rss_mb']:.0f} MB")
        paced = phase_gateway(fleet, o, paced=True, tag=f"{n_devices}-{r}-paced")
        log(f"  run {r + 1}: gateway paced at {o.rate:,.0f}/s (the engine published "
            f"{paced['publish_per_s']:,.0f}/s): {paced['per_s']:,.0f} "
            f"anchored/s over {paced['span_s']:.1f} s, latency p50 "
            f"{paced['latency_p50_ms']:.0f} ms p99 {paced['latency_p99_ms']:.0f} ms, "
            f"peak RSS {paced['rss_mb']:.0f} MB")
        per_run.append({"baseline": base, "burst": burst, "paced": paced,
                        "ratio": burst["per_s"] / base["per_s"]})
    return {**summarise(n_devices, per_device, o, duration, per_run), "loadavg_start": loadavg}


def summarise(n_devices: int, per_device: int, o: Opts, duration: float,
              per_run: list[dict[str, Any]]) -> dict[str, Any]:
    def m(phase: str, key: str) -> Any:
        return median(r[phase][key] for r in per_run)

    rss = median(max(r["burst"]["rss_mb"], r["paced"]["rss_mb"]) for r in per_run)
    return {
        "devices": n_devices,
        "readings": n_devices * per_device,
        "burst_readings": per_run[0]["burst"]["published"],
        "procs": o.procs,
        "runs": len(per_run),
        "batch_interval_s": o.batch_interval,
        "batch_max": o.batch_max,
        "baseline_per_s": m("baseline", "per_s"),
        "anchored_per_s": m("burst", "per_s"),
        "ratio": median(r["ratio"] for r in per_run),
        "paced_offered_per_s": o.rate,
        "paced_duration_s": duration,
        "paced_anchored_per_s": m("paced", "per_s"),
        "paced_published_per_s": m("paced", "publish_per_s"),
        "baseline_per_s_e2e": m("baseline", "per_s_e2e"),
        "anchored_per_s_e2e": m("burst", "per_s_e2e"),
        "paced_anchored_per_s_e2e": m("paced", "per_s_e2e"),
        "latency_p50_ms": m("paced", "latency_p50_ms"),
        "latency_p99_ms": m("paced", "latency_p99_ms"),
        "burst_latency_p50_ms": m("burst", "latency_p50_ms"),
        "burst_latency_p99_ms": m("burst", "latency_p99_ms"),
        "rss_mb": rss,
        "rss_mb_burst": m("burst", "rss_mb"),
        "rss_mb_paced": m("paced", "rss_mb"),
        "rss_mb_with_shutdown": median(max(r["burst"]["rss_mb_with_shutdown"],
                                           r["paced"]["rss_mb_with_shutdown"]) for r in per_run),
        "cpu_cores": m("burst", "cpu_cores"),
        "rss_mb_workers": m("burst", "rss_mb_workers"),
        "cpu_us_per_reading_workers": median(1e6 * r["burst"]["cpu_s_workers"]
                                             / max(1, r["burst"]["anchored"]) for r in per_run),
        "cpu_us_per_reading": m("burst", "cpu_us_per_reading"),
        "cpu_cores_paced": m("paced", "cpu_cores"),
        "baseline_cpu_us_per_msg": m("baseline", "consumer_us_per_msg"),
        "broker_us_per_reading": m("burst", "broker_us_per_reading"),
        "engine_us_per_reading": median(1e6 * r["burst"]["engine_cpu_s"]
                                        / max(1, r["burst"]["anchored"]) for r in per_run),
        "machine_cores_paced": m("paced", "machine_cores"),
        "others_cores": median(max(r[p]["others_cores"] for p in ("baseline", "burst", "paced"))
                               for r in per_run),
        "batches": m("burst", "batches"),
        "batch_mean": m("burst", "batch_mean"),
        "batch_max_seen": m("burst", "batch_max"),
        "commit_ms_mean": m("burst", "commit_ms_mean"),
        "commit_ms_max": m("burst", "commit_ms_max"),
        "paced_batches": m("paced", "batches"),
        "paced_batch_mean": m("paced", "batch_mean"),
        "paced_commit_ms_mean": m("paced", "commit_ms_mean"),
        "paced_commit_ms_max": m("paced", "commit_ms_max"),
        "republished": sum(r["burst"]["republished"] + r["paced"]["republished"]
                           for r in per_run),
        "all_anchored": all(r[p]["anchored"] == r[p]["published"] == r[p]["acknowledged"]
                            for r in per_run for p in ("burst", "paced")),
        "per_run": [{"baseline_per_s": r["baseline"]["per_s"],
                     "anchored_per_s": r["burst"]["per_s"], "ratio": r["ratio"],
                     "paced_per_s": r["paced"]["per_s"],
                     "p50_ms": r["paced"]["latency_p50_ms"],
                     "p99_ms": r["paced"]["latency_p99_ms"],
                     "rss_mb": max(r["burst"]["rss_mb"], r["paced"]["rss_mb"])}
                    for r in per_run],
    }


def F(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def print_summary(s: dict[str, Any]) -> None:
    """The readable summary; a figure that could not be measured shows as n/a."""

    def g(key: str, spec: str) -> str:
        return F(s.get(key), spec)

    goal_lat = s["batch_interval_s"] * 1000 + 250
    print(f"== {s['devices']} devices, {g('readings', ',')} pre-signed readings (bursts of "
          f"{g('burst_readings', ',')}), load over {s['procs']} processes, median of "
          f"{s['runs']} runs ==")
    print(f"  baseline (bare paho, QoS 1)   {g('baseline_per_s', '>10,.0f')} msgs/s "
          f"(end to end {g('baseline_per_s_e2e', ',.0f')}; "
          f"{g('baseline_cpu_us_per_msg', '.0f')} us CPU/msg)")
    print(f"  gateway, burst                {g('anchored_per_s', '>10,.0f')} anchored/s "
          f"(end to end {g('anchored_per_s_e2e', ',.0f')})   ratio {g('ratio', '.2f')} "
          f"(goal >= 0.8)")
    print(f"  gateway, paced {g('paced_offered_per_s', ',.0f')}/s for "
          f"{g('paced_duration_s', 'g')} s {g('paced_anchored_per_s', '>7,.0f')} anchored/s "
          f"(end to end {g('paced_anchored_per_s_e2e', ',.0f')})   (goal >= 10,000 for 60 s)")
    print(f"  latency publish->anchored (paced) p50 {g('latency_p50_ms', '.0f')} ms, p99 "
          f"{g('latency_p99_ms', '.0f')} ms (goal p99 <= {goal_lat:.0f} ms); in the burst "
          f"p50 {g('burst_latency_p50_ms', '.0f')} ms, p99 {g('burst_latency_p99_ms', '.0f')} "
          f"ms (queueing)")
    print(f"  gateway CPU {g('cpu_cores', '.2f')} cores in the burst, "
          f"{g('cpu_us_per_reading', '.0f')} us/reading (of which its verifier processes "
          f"{g('cpu_us_per_reading_workers', '.0f')}); {g('cpu_cores_paced', '.2f')} cores "
          f"paced; broker {g('broker_us_per_reading', '.0f')} us/reading, load engine "
          f"{g('engine_us_per_reading', '.0f')} us/reading; the whole machine "
          f"{g('machine_cores_paced', '.2f')} cores busy while paced")
    print(f"  peak RSS {g('rss_mb', '.0f')} MB while running, with its verifier processes "
          f"(burst {g('rss_mb_burst', '.0f')}, of which the verifiers "
          f"{g('rss_mb_workers', '.0f')}; paced {g('rss_mb_paced', '.0f')}; goal <= 200); "
          f"{g('rss_mb_with_shutdown', '.0f')} MB including the shutdown")
    print(f"  batches (burst): {g('batches', '.0f')}, mean {g('batch_mean', '.0f')} readings, "
          f"max {g('batch_max_seen', '.0f')}, commit mean {g('commit_ms_mean', '.1f')} ms, max "
          f"{g('commit_ms_max', '.1f')} ms; paced: {g('paced_batches', '.0f')} batches, mean "
          f"{g('paced_batch_mean', '.0f')}, commit mean {g('paced_commit_ms_mean', '.1f')} ms")
    print(f"  other processes on the machine (not the bench) used {g('others_cores', '.2f')} "
          f"cores (median over runs of the busiest phase); load average at the start "
          f"{s.get('loadavg_start')}")
    print(f"  every reading anchored and acknowledged: {'yes' if s['all_anchored'] else 'NO'}; "
          f"republished {s['republished']}")


# --------------------------------------------------------------------------- the plot


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AnchorError("matplotlib is not installed, so the plot cannot be drawn",
                          "run 'make bench' (it installs the bench extra) or "
                          "'.venv/bin/pip install -e .[bench]'") from e
    xs = [r["devices"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax1.plot(xs, [r["baseline_per_s"] for r in results], "o-", label="baseline: bare paho QoS 1")
    ax1.plot(xs, [r["anchored_per_s"] for r in results], "s-", label="gateway: anchored (burst)")
    ax1.plot(xs, [r["paced_anchored_per_s"] for r in results], "^--",
             label=f"gateway: anchored, offered {results[0]['paced_offered_per_s']:,.0f}/s")
    ax1.axhline(10000, color="grey", lw=0.8, ls=":", label="goal 10,000/s")
    ax1.set_xscale("log")
    ax1.set_xticks(xs, [f"{x:,}" for x in xs])
    ax1.set_xlabel("simulated devices")
    ax1.set_ylabel("readings / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("throughput")
    ax1.legend(fontsize=8)
    ax2.plot(xs, [r["latency_p50_ms"] for r in results], "o-", label="p50")
    ax2.plot(xs, [r["latency_p99_ms"] for r in results], "s-", label="p99")
    goal = results[0]["batch_interval_s"] * 1000 + 250
    ax2.axhline(goal, color="grey", lw=0.8, ls=":", label=f"goal p99 {goal:.0f} ms")
    ax2.set_xscale("log")
    ax2.set_xticks(xs, [f"{x:,}" for x in xs])
    ax2.set_xlabel("simulated devices")
    ax2.set_ylabel("publish -> anchored ack (ms)")
    ax2.set_ylim(bottom=0)
    ax2.set_title(f"latency at {results[0]['paced_offered_per_s']:,.0f} readings/s offered")
    ax2.legend(fontsize=8)
    fig.suptitle(f"iot-anchor gateway on {os.cpu_count()} cores (broker and load on the same "
                 f"machine), median of {results[0]['runs']} runs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Gateway throughput, latency, CPU and memory at fleet scale, against a "
                    "bare paho subscriber on the same broker and load.")
    ap.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    ap.add_argument("--duration", type=float, default=20.0, metavar="S",
                    help="seconds of paced load; N = rate x duration readings (default 20; "
                         "--duration 60 for the issue's sustained-60-s figure)")
    ap.add_argument("--rate", type=float, default=5000.0, metavar="R",
                    help="readings/s offered in the paced phase (default 5000: the latency of "
                         "a gateway that keeps up; --rate 10000 --duration 60 for the issue's "
                         "sustained goal)")
    ap.add_argument("--burst", type=int, default=100_000, metavar="N",
                    help="readings in the burst phases (default 100000, at most rate x "
                         "duration): a backlog the gateway drains in seconds, not minutes")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure, medians (default 3)")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2,
                    help="load-engine processes (default: one per core)")
    ap.add_argument("--batch-interval", type=float, default=1.0, metavar="S")
    ap.add_argument("--batch-max", type=int, default=4096, metavar="N")
    ap.add_argument("--sweep", metavar="D1,D2,...",
                    help="run for each device count and draw the plot (e.g. 100,1000,5000)")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench-devices.png",
                    help="where --sweep writes its PNG (default docs/bench-devices.png)")
    ap.add_argument("--ledger", type=int, metavar="N",
                    help="instead: the ledger/receipt/ingest figures on an N-reading ledger "
                         "(tools/bench_ledger.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    if args.ledger:
        import bench_ledger  # tools/ is on sys.path when run as a script

        return int(bench_ledger.main(["--readings", str(args.ledger)]))
    if args.runs < 1 or args.devices < 1 or args.rate <= 0 or args.duration <= 0:
        ap.error("--runs, --devices, --rate and --duration must be positive")
    sizes = ([int(x) for x in args.sweep.split(",") if x.strip()] if args.sweep
             else [args.devices])
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the gateways, brokers, workers.
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="iot-anchor-bench-"))
    o = Opts(args.procs, args.batch_interval, args.batch_max, args.rate, workdir, args.burst)
    t0 = time.monotonic()
    results = []
    try:
        for n in sizes:
            results.append(bench_devices(n, o, args.duration, args.runs))
            print_summary(results[-1])
        if args.sweep:
            plot(results, args.plot)
            print(f"plot: {args.plot}")
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"bench took {time.monotonic() - t0:.0f} s")
    out = dict(results[-1]) if len(results) == 1 else {**results[-1], "sweep": results}
    if len(results) > 1:
        # the headline figures are the default fleet size's when the sweep has it
        for r in results:
            if r["devices"] == args.devices:
                out = {**r, "sweep": results}
    print(json.dumps(_rounded(out)))
    return 0


def _interrupted(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _rounded(x: Any) -> Any:
    if isinstance(x, float):
        if math.isnan(x):
            return None  # not measurable in this run (JSON has no NaN)
        return round(x, 3) if abs(x) < 100 else round(x, 1)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AnchorError as e:
        print(f"error: {e.explain()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
