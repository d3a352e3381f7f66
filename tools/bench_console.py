"""The operator console's answer times on a large ledger, against the log's own /checkpoint.

    .venv/bin/python tools/bench_console.py [--readings 1000000] [--devices 1000]
                                            [--data DIR] [--requests 50]

1. A ledger: --data DIR if it holds one, else N readings from D devices ingested into a
   fresh data dir (the pre-signed readings of tools/bench_ledger.py, cached in .cache/bench/).
2. `iot-anchor serve` on a free loopback port (a process of its own, as an operator runs it).
3. For each console answer (the overview, device pages sorted several ways, one device, its
   series, a receipt, /metrics, a page), --requests sequential GETs: p50 and p99 wall time,
   and the server's CPU time per request (/proc), each also as a ratio to the baseline
   measured in the same run: GET /checkpoint (one indexed row, the cheapest read).
4. What a browser open on the overview (one /api/overview every 2 s) and a Prometheus scrape
   every 5 s cost the server: CPU per second, from the per-request figures.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_ledger import readings_file  # noqa: E402
from benchlib.procfs import proc_cpu_s  # noqa: E402
from benchlib.script import iot_anchor_command, log, run_main  # noqa: E402
from benchlib.stats import percentile  # noqa: E402

from gateway.errors import AnchorError  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.storage.store import DB_NAME, Store  # noqa: E402


def build(data: Path, readings: int, devices: int, procs: int) -> None:
    path, keys = readings_file(readings, devices, procs)
    init = subprocess.run(iot_anchor_command("init", "--data", str(data)), capture_output=True,
                          text=True)
    if init.returncode != 0:
        raise AnchorError(f"iot-anchor init failed: {init.stderr.strip()}",
                          "pass a --data dir that does not exist yet")
    with Store.open(data) as store:
        for dev, key in keys.items():
            registry.add(store, dev, key)
    log(f"ingesting {path} into {data} ...")
    t0 = time.perf_counter()
    ing = subprocess.run(iot_anchor_command("ingest", "--binary", str(path), "--data",
                                            str(data), "--json"), capture_output=True, text=True)
    if ing.returncode != 0:
        raise AnchorError(f"ingest failed: {ing.stderr.strip()[-300:]}", "see above")
    log(f"ingested in {time.perf_counter() - t0:.0f} s")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def measure(base: str, path: str, n: int, pid: int) -> dict[str, Any]:
    code, body = get(base + path)  # warm: the first read of pages the OS has not cached
    if code != 200:
        raise AnchorError(f"GET {path} answered {code}: {body[:200]!r}", "a bug to report")
    ms = []
    cpu0 = proc_cpu_s(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        code, body = get(base + path)
        ms.append((time.perf_counter() - t0) * 1000)
    cpu = (proc_cpu_s(pid) - cpu0) / n * 1000
    ms.sort()
    return {"path": path, "p50_ms": statistics.median(ms), "p99_ms": percentile(ms, 99),
            "cpu_ms": cpu, "bytes": len(body)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="console answer times on a large ledger")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--requests", type=int, default=50, help="GETs per answer (default 50)")
    ap.add_argument("--data", type=Path, default=None,
                    help="a data dir holding a ledger (kept), or where to build one")
    args = ap.parse_args(argv)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="iot-anchor-bench-console-")
        data = Path(tmp.name) / "data"
    else:
        data = args.data
    serve = None
    try:
        if not (data / DB_NAME).exists():
            build(data, args.readings, args.devices, args.procs)
        with Store.open(data) as store:  # read-write once: migrates an older ledger
            readings = store.reading_count()
            devs = [d.id for d in store.devices()]
        dev = devs[len(devs) // 2]
        serve = subprocess.Popen(iot_anchor_command("serve", "--data", str(data), "--http",
                                                    "127.0.0.1:0"),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert serve.stdout is not None
        line = serve.stdout.readline()
        if " on " not in line:
            raise AnchorError(f"serve did not start: {line!r}", "see its output")
        base = line.split(" on ", 1)[1].strip()
        paths = {
            "baseline /checkpoint": "/checkpoint",
            "overview": "/api/overview",
            "devices, by id": "/api/devices?limit=100",
            "devices, by readings today": "/api/devices?limit=100&sort=today&desc=1",
            "devices, by last seen, filtered": "/api/devices?limit=100&sort=last_seen&q=1",
            "devices, last page": f"/api/devices?limit=100&offset={max(0, len(devs) - 100)}",
            "one device": f"/api/devices/{dev}",
            "its series (the hour up to its newest)": f"/api/devices/{dev}/series",
            "a receipt": f"/receipt/{dev}/0",
            "/metrics": "/metrics",
            "a page (device.html)": "/console/device",
        }
        res = {name: measure(base, p, args.requests, serve.pid) for name, p in paths.items()}
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(10)
        if tmp is not None:
            tmp.cleanup()
    b = res["baseline /checkpoint"]
    print(f"== console on a ledger of {readings:,} readings, {len(devs):,} devices "
          f"({args.requests} GETs each; ratio = p50 / the baseline's p50) ==")
    for name, r in res.items():
        r["ratio"] = r["p50_ms"] / b["p50_ms"]
        print(f"  {name:40} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
              f"ratio {r['ratio']:6.1f}  server CPU {r['cpu_ms']:6.2f} ms/request  "
              f"{r['bytes']:>8,} bytes")
    watch = res["overview"]["cpu_ms"] / 2 + res["/metrics"]["cpu_ms"] / 5
    print(f"  a browser on the overview (every 2 s) and a scrape every 5 s: "
          f"{watch:.2f} ms of server CPU per second ({watch / 10:.3f} % of one core)")
    slowest = max(r["p99_ms"] for r in res.values())
    print(f"  slowest p99: {slowest:.1f} ms (goal < 200 ms)")
    print(json.dumps({"readings": readings, "devices": len(devs), "requests": args.requests,
                      "watch_cpu_ms_per_s": round(watch, 3), "slowest_p99_ms": round(slowest, 2),
                      "answers": {k: {x: (round(y, 3) if isinstance(y, float) else y)
                                      for x, y in v.items()} for k, v in res.items()}}))
    return 0


if __name__ == "__main__":
    run_main(main)
