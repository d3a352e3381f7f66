"""The report of `make bench`: the figures of a fleet size (the keys of the JSON line), the
readable summary, and the JSON line itself (`json_line`: the headline fleet size's figures, and
the whole sweep under "sweep")."""

from __future__ import annotations

import json
import math
from typing import Any

from benchlib.phases import BenchOptions, FleetSizeRuns
from benchlib.stats import median, us_per


def summary_figures(runs: FleetSizeRuns, options: BenchOptions) -> dict[str, Any]:
    """The figures of one fleet size, each the median over its runs: the keys of the JSON
    line (others read them; rename none). A figure no run measured is None."""
    per_run = runs.per_run

    def phase_median(phase: str, key: str) -> Any:
        return median(r[phase][key] for r in per_run)

    rss = median(max(r["burst"]["rss_mb"], r["paced"]["rss_mb"]) for r in per_run)
    return {
        "devices": runs.devices,
        "readings": runs.devices * runs.per_device,
        "burst_readings": per_run[0]["burst"]["published"],
        "procs": options.procs,
        "runs": len(per_run),
        "batch_interval_s": options.batch_interval,
        "batch_max": options.batch_max,
        "baseline_per_s": phase_median("baseline", "per_s"),
        "anchored_per_s": phase_median("burst", "per_s"),
        "ratio": median(r["ratio"] for r in per_run),
        "paced_offered_per_s": options.rate,
        "paced_duration_s": runs.duration,
        "paced_anchored_per_s": phase_median("paced", "per_s"),
        "paced_published_per_s": phase_median("paced", "publish_per_s"),
        "baseline_per_s_e2e": phase_median("baseline", "per_s_e2e"),
        "anchored_per_s_e2e": phase_median("burst", "per_s_e2e"),
        "paced_anchored_per_s_e2e": phase_median("paced", "per_s_e2e"),
        "latency_p50_ms": phase_median("paced", "latency_p50_ms"),
        "latency_p99_ms": phase_median("paced", "latency_p99_ms"),
        "burst_latency_p50_ms": phase_median("burst", "latency_p50_ms"),
        "burst_latency_p99_ms": phase_median("burst", "latency_p99_ms"),
        "rss_mb": rss,
        "rss_mb_burst": phase_median("burst", "rss_mb"),
        "rss_mb_paced": phase_median("paced", "rss_mb"),
        "rss_mb_with_shutdown": median(max(r["burst"]["rss_mb_with_shutdown"],
                                           r["paced"]["rss_mb_with_shutdown"]) for r in per_run),
        "cpu_cores": phase_median("burst", "cpu_cores"),
        "rss_mb_workers": phase_median("burst", "rss_mb_workers"),
        "cpu_us_per_reading_workers": median(us_per(r["burst"]["cpu_s_workers"],
                                                    r["burst"]["anchored"]) for r in per_run),
        "cpu_us_per_reading": phase_median("burst", "cpu_us_per_reading"),
        # --console: the overview polled every 2 s and /metrics every 5 s in the paced phase
        "console_requests": median(r["paced"].get("console_requests") for r in per_run),
        "console_failures": median(r["paced"].get("console_failures") for r in per_run),
        "console_p99_ms": median(r["paced"].get("console_p99_ms") for r in per_run),
        "cpu_cores_paced": phase_median("paced", "cpu_cores"),
        "baseline_cpu_us_per_msg": phase_median("baseline", "consumer_us_per_msg"),
        "broker_us_per_reading": phase_median("burst", "broker_us_per_reading"),
        "engine_us_per_reading": median(us_per(r["burst"]["engine_cpu_s"],
                                               r["burst"]["anchored"]) for r in per_run),
        "machine_cores_paced": phase_median("paced", "machine_cores"),
        "others_cores": median(max(r[p]["others_cores"] for p in ("baseline", "burst", "paced"))
                               for r in per_run),
        "batches": phase_median("burst", "batches"),
        "batch_mean": phase_median("burst", "batch_mean"),
        "batch_max_seen": phase_median("burst", "batch_max"),
        "commit_ms_mean": phase_median("burst", "commit_ms_mean"),
        "commit_ms_max": phase_median("burst", "commit_ms_max"),
        "paced_batches": phase_median("paced", "batches"),
        "paced_batch_mean": phase_median("paced", "batch_mean"),
        "paced_commit_ms_mean": phase_median("paced", "commit_ms_mean"),
        "paced_commit_ms_max": phase_median("paced", "commit_ms_max"),
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
        "loadavg_start": runs.loadavg_start,
    }


def format_figure(x: Any, spec: str) -> str:
    """`format(x, spec)`, or "n/a" for a figure that was not measured (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def print_summary(figures: dict[str, Any]) -> None:
    """The readable summary; a figure that could not be measured shows as n/a."""

    def shown(key: str, spec: str) -> str:
        return format_figure(figures.get(key), spec)

    goal_lat = figures["batch_interval_s"] * 1000 + 250
    print(f"== {figures['devices']} devices, {shown('readings', ',')} pre-signed readings "
          f"(bursts of {shown('burst_readings', ',')}), load over {figures['procs']} "
          f"processes, median of {figures['runs']} runs ==")
    print(f"  baseline (bare paho, QoS 1)   {shown('baseline_per_s', '>10,.0f')} msgs/s "
          f"(end to end {shown('baseline_per_s_e2e', ',.0f')}; "
          f"{shown('baseline_cpu_us_per_msg', '.0f')} us CPU/msg)")
    print(f"  gateway, burst                {shown('anchored_per_s', '>10,.0f')} anchored/s "
          f"(end to end {shown('anchored_per_s_e2e', ',.0f')})   ratio "
          f"{shown('ratio', '.2f')} (goal >= 0.8)")
    if figures.get("console_requests"):
        print(f"  console watched while paced: {shown('console_requests', ',.0f')} requests "
              f"(overview every 2 s, /metrics every 5 s), {shown('console_failures', ',.0f')} "
              f"failed, p99 {shown('console_p99_ms', '.1f')} ms")
    print(f"  gateway, paced {shown('paced_offered_per_s', ',.0f')}/s for "
          f"{shown('paced_duration_s', 'g')} s {shown('paced_anchored_per_s', '>7,.0f')} "
          f"anchored/s (end to end {shown('paced_anchored_per_s_e2e', ',.0f')})   "
          f"(goal >= 10,000 for 60 s)")
    print(f"  latency publish->anchored (paced) p50 {shown('latency_p50_ms', '.0f')} ms, p99 "
          f"{shown('latency_p99_ms', '.0f')} ms (goal p99 <= {goal_lat:.0f} ms); in the burst "
          f"p50 {shown('burst_latency_p50_ms', '.0f')} ms, p99 "
          f"{shown('burst_latency_p99_ms', '.0f')} ms (queueing)")
    print(f"  gateway CPU {shown('cpu_cores', '.2f')} cores in the burst, "
          f"{shown('cpu_us_per_reading', '.0f')} us/reading (of which its verifier processes "
          f"{shown('cpu_us_per_reading_workers', '.0f')}); "
          f"{shown('cpu_cores_paced', '.2f')} cores paced; broker "
          f"{shown('broker_us_per_reading', '.0f')} us/reading, load engine "
          f"{shown('engine_us_per_reading', '.0f')} us/reading; the whole machine "
          f"{shown('machine_cores_paced', '.2f')} cores busy while paced")
    print(f"  peak RSS {shown('rss_mb', '.0f')} MB while running, with its verifier processes "
          f"(burst {shown('rss_mb_burst', '.0f')}, of which the verifiers "
          f"{shown('rss_mb_workers', '.0f')}; paced {shown('rss_mb_paced', '.0f')}; "
          f"goal <= 200); {shown('rss_mb_with_shutdown', '.0f')} MB including the shutdown")
    print(f"  batches (burst): {shown('batches', '.0f')}, mean {shown('batch_mean', '.0f')} "
          f"readings, max {shown('batch_max_seen', '.0f')}, commit mean "
          f"{shown('commit_ms_mean', '.1f')} ms, max {shown('commit_ms_max', '.1f')} ms; "
          f"paced: {shown('paced_batches', '.0f')} batches, mean "
          f"{shown('paced_batch_mean', '.0f')}, commit mean "
          f"{shown('paced_commit_ms_mean', '.1f')} ms")
    print(f"  other processes on the machine (not the bench) used "
          f"{shown('others_cores', '.2f')} cores (median over runs of the busiest phase); "
          f"load average at the start {figures.get('loadavg_start')}")
    print(f"  every reading anchored and acknowledged: "
          f"{'yes' if figures['all_anchored'] else 'NO'}; republished {figures['republished']}")


def json_line(results: list[dict[str, Any]], headline_devices: int) -> str:
    """The last line: the figures of one fleet size, or of a sweep (several) those of the one
    with `headline_devices` devices (else the last) and the whole sweep under "sweep"."""
    out = dict(results[-1]) if len(results) == 1 else {**results[-1], "sweep": results}
    if len(results) > 1:
        for r in results:
            if r["devices"] == headline_devices:
                out = {**r, "sweep": results}
    return json.dumps(json_ready(out))


def json_ready(x: Any) -> Any:
    """Figures for json.dumps: floats rounded (3 places below 100, else 1), NaN as null."""
    if isinstance(x, float):
        if math.isnan(x):
            return None  # not measurable in this run (JSON has no NaN)
        return round(x, 3) if abs(x) < 100 else round(x, 1)
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_ready(v) for v in x]
    return x
