"""The sweep's plot (`--sweep`, docs/bench-devices.png), drawn with matplotlib (the bench extra,
imported only here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.errors import AnchorError


def plot_sweep(results: list[dict[str, Any]], path: Path) -> None:
    """Throughput and latency against the number of devices, one point per fleet size, as a
    PNG at `path`. Raises AnchorError without matplotlib (the bench extra)."""
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
