"""Dataset export and verify at scale (`make bench-provenance`; issue 14's goals).

    .venv/bin/python tools/bench_provenance.py [--readings 1000000] [--devices 1000]

1. N readings from D devices, pre-signed as the firmware signs them (cached in .cache/bench/,
   shared with tools/bench_ledger.py), ingested into a fresh data dir with `iot-anchor ingest`.
2. The baseline, in the same run: `cryptography`'s bare ES256 verify loop on 2 threads over a
   sample of the same messages (signatures and Sig_structures prepared beforehand), measured
   right before and right after each export and verify; each ratio is against the mean of
   the two around it, so a load that changes during the run moves both alike.
3. `iot-anchor dataset export` of every reading, then `iot-anchor dataset verify` of it, each
   a subprocess: wall time, rows/s, and peak resident memory of the process tree (VmRSS
   sampled every 0.25 s, its verifier processes included).
4. The same at N/4, so "memory flat in rows" is a ratio: peak RSS at N over peak RSS at N/4.
5. Sizes: the provenance directory against the COSE messages themselves.

The goals (docs/provenance.md): export >= 50,000 rows/s, verify >= 15,000 rows/s, provenance
<= 2x the COSE bytes, memory flat. Prints a readable summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"]
                                        if os.environ.get("PYTHONPATH") else "")

from bench_gateway import bare_verify_rate  # noqa: E402
from bench_ledger import peak_rss_of, readings_file  # noqa: E402
from benchlib.script import log, run_main  # noqa: E402

from gateway.errors import AnchorError  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.storage.store import VKEY_NAME, Store  # noqa: E402

SAMPLE = 20_000  # messages in the baseline loop


def gw(*args: str) -> list[str]:
    """This checkout's iot-anchor (not an installed one)."""
    return [sys.executable, "-m", "gateway", *args]


def messages(path: Path, limit: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    with open(path, "rb") as f:
        while limit is None or len(out) < limit:
            head = f.read(4)
            if len(head) < 4:
                break
            out.append(f.read(int.from_bytes(head, "big")))
    return out


def tree_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def build(work: Path, n: int, devices: int, procs: int) -> tuple[Path, Path, int]:
    """A data dir with n anchored readings; returns (data dir, readings file, COSE bytes)."""
    path, keys = readings_file(n, devices, procs)
    data = work / f"data-{n}"
    p = subprocess.run(gw("init", "--data", str(data)), capture_output=True, text=True)
    if p.returncode != 0:
        raise AnchorError(f"iot-anchor init failed: {p.stderr.strip()}", "see above")
    with Store.open(data) as store:
        for dev, key in keys.items():
            registry.add(store, dev, key)
    t0 = time.perf_counter()
    p = subprocess.run(gw("ingest", "--binary", str(path), "--data", str(data), "--json"),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AnchorError(f"ingest failed: {p.stderr.strip()[-300:]}", "see above")
    log(f"ingested {json.loads(p.stdout)['accepted']:,} readings in "
        f"{time.perf_counter() - t0:.1f} s")
    cose = path.stat().st_size - 4 * len(messages_count(path))  # the messages alone
    return data, path, cose


def messages_count(path: Path) -> range:
    n = 0
    with open(path, "rb") as f:
        while head := f.read(4):
            f.seek(int.from_bytes(head, "big"), 1)
            n += 1
    return range(n)


def measure(work: Path, data: Path, n: int, bare: Callable[[], float]) -> dict[str, Any]:
    out = work / f"dataset-{n}"
    b0 = bare()
    exp, exp_peak = peak_rss_of(gw("dataset", "export", str(out), "--name", f"bench-{n}",
                                   "--json", "--data", str(data)))
    if exp["rc"] != 0:
        raise AnchorError(f"dataset export failed: {exp['err'].strip()[-300:]}", "see above")
    rows = json.loads(exp["out"].strip().splitlines()[-1])["rows"]
    vkey = (data / VKEY_NAME).read_text().strip()
    b1 = bare()
    ver, ver_peak = peak_rss_of(gw("dataset", "verify", str(out), "--gateway-key", vkey))
    if ver["rc"] != 0:
        raise AnchorError(f"dataset verify failed: {(ver['out'] + ver['err']).strip()[-300:]}",
                          "the export the bench made does not verify: a bug to report")
    b2 = bare()
    prov = tree_bytes(out / "provenance")
    return {"bare_verify_2threads_s": [b0, b1, b2],
            "export_vs_bare": rows / exp["wall_s"] / ((b0 + b1) / 2),
            "verify_vs_bare": rows / ver["wall_s"] / ((b1 + b2) / 2),
            "rows": rows, "export_s": exp["wall_s"], "export_rows_s": rows / exp["wall_s"],
            "export_peak_rss_mb": exp_peak, "verify_s": ver["wall_s"],
            "verify_rows_s": rows / ver["wall_s"], "verify_peak_rss_mb": ver_peak,
            "provenance_bytes": prov, "data_bytes": tree_bytes(out / "data")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dataset export / verify figures")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2,
                    help="signing processes (default: one per core)")
    args = ap.parse_args(argv)
    if args.readings < 4 or args.devices < 1:
        ap.error("--readings must be >= 4 and --devices >= 1")
    with tempfile.TemporaryDirectory(prefix="iot-anchor-bench-prov-") as tmp:
        work = Path(tmp)
        data, path, cose = build(work, args.readings, args.devices, args.procs)
        sample = messages(path, SAMPLE)
        _p, keys = readings_file(args.readings, args.devices, args.procs)
        log("export and verify, with the bare verify loop around each ...")
        big = measure(work, data, args.readings, lambda: bare_verify_rate(sample, keys, 2))
        small_n = args.readings // 4
        small_data, _sp, _sc = build(work, small_n, args.devices, args.procs)
        small = measure(work, small_data, small_n, lambda: bare_verify_rate(sample, keys, 2))
    res = {
        "readings": args.readings, "devices": args.devices,
        **big,
        "cose_bytes": cose,
        "provenance_vs_cose": big["provenance_bytes"] / cose,
        "quarter": small,
        "export_rss_ratio_n_vs_quarter": big["export_peak_rss_mb"] / small["export_peak_rss_mb"],
        "verify_rss_ratio_n_vs_quarter": big["verify_peak_rss_mb"] / small["verify_peak_rss_mb"],
    }
    bare = big["bare_verify_2threads_s"]
    print(f"dataset of {res['rows']:,} rows from {args.devices} devices: export "
          f"{res['export_rows_s']:,.0f} rows/s ({res['export_vs_bare']:.2f}x the bare verify "
          f"rate), verify {res['verify_rows_s']:,.0f} rows/s ({res['verify_vs_bare']:.2f} of "
          f"cryptography's bare 2-thread verify, {bare[1]:,.0f} to {bare[2]:,.0f}/s around "
          f"it); provenance "
          f"{res['provenance_vs_cose']:.2f}x the COSE bytes; peak RSS export "
          f"{big['export_peak_rss_mb']:.0f} MB, verify {big['verify_peak_rss_mb']:.0f} MB "
          f"({res['export_rss_ratio_n_vs_quarter']:.2f}x and "
          f"{res['verify_rss_ratio_n_vs_quarter']:.2f}x those at {small_n:,} rows)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    run_main(main)
