"""The ledger, receipt and ingest figures on a large ledger (`tools/bench.py --ledger N`).

    .venv/bin/python tools/bench_ledger.py [--readings 1000000] [--devices 1000]

1. N readings from D devices are pre-signed with the load engine's signer (the firmware's bytes,
   real ES256) on --procs processes and written as one length-prefixed binary file. The file and
   the device keys are cached in .cache/bench/ (signing 1M readings takes about a minute).
2. A fresh data dir (`iot-anchor init`), the D devices registered, then
   `iot-anchor ingest --binary FILE` as a subprocess: wall time, readings/s, and its resident
   memory, with its verifier processes, sampled every 0.25 s (VmRSS), and its peak (the largest
   sample; wait4's ru_maxrss is no use here: it keeps the size of this process, which forked
   it): "bounded memory" means the RSS levels off instead of growing with the readings ingested.
3. `iot-anchor ledger verify` as a subprocess (its --workers default, 2 processes): readings/s.
4. Receipts for --receipts random readings, in process: build (the store's proof parts + the
   JSON receipt) and verify (`verify_receipt` with the device key, so the ES256 signature is
   checked too), milliseconds each, median and p99.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib.procfs import tree_rss_mb  # noqa: E402
from benchlib.script import iot_anchor_command, log, run_main  # noqa: E402
from benchlib.stats import percentile  # noqa: E402

from gateway.errors import AnchorError  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.ledger.receipt import (  # noqa: E402
    build_receipt,
    parse_receipt,
    receipt_to_json,
    verify_receipt,
)
from gateway.sim import loadgen  # noqa: E402
from gateway.storage.store import VKEY_NAME, Store  # noqa: E402
from gateway.wire.signer import DeviceSigner  # noqa: E402

CACHE = ROOT / ".cache" / "bench"


def _sign_share(job: tuple[list[tuple[str, str, int]], int, str]) -> int:
    """Sign `count` readings for each (dev, secret hex, index) into a part file."""
    devs, count, path = job
    n = 0
    with open(path, "wb") as f:
        for dev, secret, index in devs:
            state = loadgen.DeviceState(dev, bytes.fromhex(secret))
            for _seq, msg in loadgen.presign(state, index, count):
                f.write(len(msg).to_bytes(4, "big"))
                f.write(msg)
                n += 1
    return n


def readings_file(n: int, devices: int, procs: int) -> tuple[Path, dict[str, bytes]]:
    """The cached input: N readings (N / D per device, device by device) and the keys."""
    per = math.ceil(n / devices)
    d = CACHE / f"ledger-{devices}x{per}"
    data, keys = d / "readings.bin", d / "keys.json"
    if data.exists() and keys.exists():
        log(f"using the cached readings in {d}")
        return data, {k: bytes.fromhex(v) for k, v in json.loads(keys.read_text()).items()}
    d.mkdir(parents=True, exist_ok=True)
    signers = [DeviceSigner.generate(f"load-{i:04d}") for i in range(devices)]
    shares = [[(s.dev, s.secret.hex(), i) for i, s in enumerate(signers) if i % procs == p]
              for p in range(procs)]
    t0 = time.perf_counter()
    parts = [str(d / f"part-{p}") for p in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        total = sum(pool.map(_sign_share, [(s, per, path) for s, path in zip(shares, parts,
                                                                               strict=True)]))
    # one file, devices interleaved part by part (each device's seqs stay in order)
    with open(data.with_suffix(".tmp"), "wb") as out:
        for path in parts:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
            os.unlink(path)
    os.replace(data.with_suffix(".tmp"), data)
    keys.write_text(json.dumps({s.dev: s.public_key.hex() for s in signers}))
    log(f"signed {total:,} readings on {procs} processes in {time.perf_counter() - t0:.1f} s")
    return data, {s.dev: s.public_key for s in signers}


def run_measured(cmd: list[str]) -> dict[str, Any]:
    """Run a command; wall time and its tree's VmRSS every 0.25 s."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []

    def sample() -> None:
        while p.poll() is None:
            try:
                samples.append((time.perf_counter() - t0, tree_rss_mb(p.pid)))
            except OSError:
                return
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    th.join()
    return {"rc": p.returncode, "out": out, "err": err, "wall_s": wall, "rss": samples}


def peak_rss_of(cmd: list[str]) -> tuple[dict[str, Any], float]:
    """run_measured plus the largest RSS sample (the process and its verifier workers)."""
    res = run_measured(cmd)
    return res, max((r for _, r in res["rss"]), default=math.nan)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ledger verify, receipt and ingest figures")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2,
                    help="signing processes (default: one per core)")
    ap.add_argument("--receipts", type=int, default=200, help="receipts to build and verify")
    ap.add_argument("--data", type=Path, default=None,
                    help="work in this (new) data dir and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.readings < 1 or args.devices < 1:
        ap.error("--readings and --devices must be positive")
    t_all = time.monotonic()
    path, keys = readings_file(args.readings, args.devices, args.procs)
    total = path.stat().st_size
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="iot-anchor-bench-ledger-")
        data = Path(tmp.name) / "data"
    else:
        data = args.data
    try:
        init = subprocess.run(iot_anchor_command("init", "--data", str(data)),
                              capture_output=True, text=True)
        if init.returncode != 0:
            raise AnchorError(f"iot-anchor init failed: {init.stderr.strip()}",
                              "pass a --data dir that does not exist yet")
        with Store.open(data) as store:
            for dev, key in keys.items():
                registry.add(store, dev, key)
        log(f"ingesting {path} ({total / 1e6:.0f} MB) into {data} ...")
        ing, ing_peak = peak_rss_of(iot_anchor_command("ingest", "--binary", str(path),
                                                       "--data", str(data), "--json"))
        if ing["rc"] != 0:
            raise AnchorError(f"ingest failed ({ing['rc']}): {ing['err'].strip()[-300:]}",
                              "see the message above")
        summary = json.loads(ing["out"].strip().splitlines()[-1])
        accepted = int(summary["accepted"])
        rss = ing["rss"]
        quarters = [max((r for t, r in rss if t <= ing["wall_s"] * q / 4), default=0.0)
                    for q in (1, 2, 3, 4)]
        log(f"ingest: {accepted:,} accepted in {ing['wall_s']:.1f} s "
            f"({accepted / ing['wall_s']:,.0f}/s), peak RSS {ing_peak:.0f} MB, RSS by quarter "
            f"{', '.join(f'{q:.0f}' for q in quarters)} MB")

        log("ledger verify ...")
        ver, ver_peak = peak_rss_of(iot_anchor_command("ledger", "verify", "--data", str(data)))
        if ver["rc"] != 0:
            raise AnchorError(f"ledger verify failed ({ver['rc']}): "
                              f"{(ver['out'] + ver['err']).strip()[-300:]}",
                              "the ledger the bench built does not verify: a bug to report")
        log(f"ledger verify: {ver['out'].strip()}")

        vkey = (data / VKEY_NAME).read_text().strip()
        rng = random.Random(6)
        devs = sorted(keys)
        per = math.ceil(args.readings / args.devices)
        build_ms, verify_ms = [], []
        with Store.open(data, readonly=True) as store:
            for _ in range(args.receipts):
                dev, seq = rng.choice(devs), rng.randrange(per)
                t0 = time.perf_counter()
                parts = store.receipt_parts(dev, seq)
                if parts is None:
                    raise AnchorError(f"{dev} seq {seq} is not anchored",
                                      "ingest did not accept every reading: a bug to report")
                text = receipt_to_json(build_receipt(**parts))
                t1 = time.perf_counter()
                verify_receipt(parse_receipt(text), vkey, keys[dev])
                t2 = time.perf_counter()
                build_ms.append((t1 - t0) * 1000)
                verify_ms.append((t2 - t1) * 1000)
    finally:
        if tmp is not None:
            tmp.cleanup()
    res = {
        "readings": accepted,
        "devices": args.devices,
        "ingest_s": ing["wall_s"],
        "ingest_per_s": accepted / ing["wall_s"],
        "ingest_peak_rss_mb": ing_peak,
        "ingest_rss_by_quarter_mb": quarters,
        "ledger_verify_s": ver["wall_s"],
        "ledger_verify_per_s": accepted / ver["wall_s"],
        "ledger_verify_peak_rss_mb": ver_peak,
        "receipt_build_ms_p50": statistics.median(build_ms),
        "receipt_build_ms_p99": percentile(sorted(build_ms), 99),
        "receipt_verify_ms_p50": statistics.median(verify_ms),
        "receipt_verify_ms_p99": percentile(sorted(verify_ms), 99),
        "receipts": len(build_ms),
    }
    print(f"== ledger of {accepted:,} readings from {args.devices} devices ==")
    print(f"  ingest --binary      {res['ingest_per_s']:>9,.0f} readings/s  "
          f"({res['ingest_s']:.0f} s), peak RSS {ing_peak:.0f} MB; RSS at the end of each "
          f"quarter {', '.join(f'{q:.0f}' for q in quarters)} MB")
    print(f"  ledger verify        {res['ledger_verify_per_s']:>9,.0f} readings/s  "
          f"({res['ledger_verify_s']:.0f} s wall, goal >= 20,000/s)")
    print(f"  receipt build        p50 {res['receipt_build_ms_p50']:.2f} ms, p99 "
          f"{res['receipt_build_ms_p99']:.2f} ms (goal <= 2 ms)")
    print(f"  receipt verify       p50 {res['receipt_verify_ms_p50']:.2f} ms, p99 "
          f"{res['receipt_verify_ms_p99']:.2f} ms (with the device signature; goal <= 2 ms)")
    log(f"bench --ledger took {time.monotonic() - t_all:.0f} s")
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else
                          [round(x, 1) for x in v] if isinstance(v, list) else v)
                      for k, v in res.items()}))
    return 0


if __name__ == "__main__":
    run_main(main)
