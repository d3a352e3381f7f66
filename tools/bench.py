"""`make bench`: the gateway at fleet scale, side by side with the bare MQTT transport.

    .venv/bin/python tools/bench.py [--devices 1000] [--duration 20] [--rate 5000] [--runs 3]
    .venv/bin/python tools/bench.py --duration 60 --rate 10000     (the sustained-10k/s goal)
    .venv/bin/python tools/bench.py --sweep 100,1000,5000 [--plot docs/bench-devices.png]
    .venv/bin/python tools/bench.py --ledger 1000000        (tools/bench_ledger.py)
    .venv/bin/python tools/bench.py --console ...   (the gateway's console watched meanwhile)
    .venv/bin/python tools/bench.py --duration 60 --rate 10000 --mirror   (a mirror following)
    .venv/bin/python tools/bench.py --rules FILE ...        (the gateway with a rule set applied)
    .venv/bin/python tools/bench.py --gateways 3 [--readings 36864]  (tools/bench_shared.py)

Everything runs on this machine: a private Mosquitto (gateway/sim/broker.py, a fresh one per phase),
the CPython load engine of `iot-anchor simulate --engine cpython` (gateway/sim/loadgen.py: its
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

This script is the command line; the work is in tools/benchlib/ (its __init__ lists the
modules).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib.phases import BenchOptions, measure_fleet_size  # noqa: E402
from benchlib.plot import plot_sweep  # noqa: E402
from benchlib.report import json_line, print_summary, summary_figures  # noqa: E402
from benchlib.script import log, run_main  # noqa: E402


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
    ap.add_argument("--mirror", action="store_true",
                    help="in the paced phase, the gateway also serves --http and an "
                         "'iot-anchor mirror --follow' follows it: the anchoring rate with a "
                         "mirror following, and how far behind the mirror ends")
    ap.add_argument("--rules", type=Path, metavar="FILE",
                    help="apply this rule file to the gateway (tools/bench_rules.py --print "
                         "writes the 20-rule set of the rules bench)")
    ap.add_argument("--gateways", type=int, metavar="N",
                    help="instead: N gateways on one PostgreSQL ledger, the cost of each part "
                         "(tools/bench_shared.py; with --readings, --devices, --batch-max)")
    ap.add_argument("--readings", type=int, default=36864, metavar="R",
                    help="with --gateways: readings in all (default 36864)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--console", action="store_true",
                    help="run the gateway with --http and, in its phases, ask what a browser "
                         "open on the console's overview (every 2 s) and a Prometheus scrape "
                         "(every 5 s) ask (docs/console.md)")
    args = ap.parse_args(argv)
    if args.gateways:
        import bench_shared  # tools/ is on sys.path when run as a script

        return int(bench_shared.main(["--gateways", str(args.gateways), "--readings",
                                      str(args.readings), "--batch-max", str(args.batch_max),
                                      "--devices", str(min(args.devices, 200))]))
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
    options = BenchOptions(args.procs, args.batch_interval, args.batch_max, args.rate, workdir,
                           args.burst, mirror=args.mirror, console=args.console,
                           rules=args.rules.read_text() if args.rules else None)
    t0 = time.monotonic()
    results = []
    try:
        for n in sizes:
            runs = measure_fleet_size(n, options, args.duration, args.runs)
            results.append(summary_figures(runs, options))
            print_summary(results[-1])
        if args.sweep:
            plot_sweep(results, args.plot)
            print(f"plot: {args.plot}")
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"bench took {time.monotonic() - t0:.0f} s")
    print(json_line(results, args.devices))
    return 0


def _interrupted(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_main(main)
