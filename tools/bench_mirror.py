"""Mirror catch-up: `iot-anchor mirror` on a ledger of N readings, against `cryptography`'s raw
ES256 verify rate measured in the same run.

    .venv/bin/python tools/bench_mirror.py [--readings 1000000] [--devices 1000] [--workers 2]

1. N pre-signed readings (tools/bench_ledger.py's cached file) are ingested into a fresh data
   dir (`iot-anchor ingest --binary`), served by `iot-anchor serve --http 127.0.0.1:0`.
2. Baseline: `cryptography` verifying P-256 ECDSA signatures on --workers processes (no
   decoding, no hashing of ours, no I/O): signatures/s.
3. `iot-anchor mirror URL --data NEW --gateway-key VKEY --workers W` as a subprocess: wall time,
   readings/s, and the resident memory of its process tree sampled every 0.25 s (peak, and the
   peak of each quarter of the run: flat memory means the quarters level off).

Prints one readable line, then one JSON object (the last line). The ratio is mirror readings/s
over the raw verify rate: the share of the signature-bound ceiling the mirror reaches.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_ledger import peak_rss_of, readings_file  # noqa: E402
from benchlib.script import iot_anchor_command, log, run_main  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from gateway.errors import AnchorError  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.storage.store import VKEY_NAME, Store  # noqa: E402


def _verify_share(n: int) -> float:
    """Verify n signatures (one key, distinct messages of a reading's size); seconds taken."""
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    msgs = [os.urandom(120) for _ in range(min(n, 512))]
    sigs = [key.sign(m, ec.ECDSA(hashes.SHA256())) for m in msgs]
    algo = ec.ECDSA(hashes.SHA256())
    t0 = time.perf_counter()
    for i in range(n):
        k = i % len(msgs)
        pub.verify(sigs[k], msgs[k], algo)
    return time.perf_counter() - t0


def raw_verify_rate(procs: int, per: int) -> float:
    """Signatures/s of `procs` processes each verifying `per` signatures at once."""
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        t0 = time.perf_counter()
        pool.map(_verify_share, [per] * procs)
        wall = time.perf_counter() - t0
    return procs * per / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mirror catch-up against the raw verify rate")
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                    help="the mirror's verifier processes, and the baseline's (default: cores)")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2,
                    help="signing processes for the cached readings")
    args = ap.parse_args(argv)
    if args.readings < 1 or args.devices < 1 or args.workers < 1:
        ap.error("--readings, --devices and --workers must be positive")
    path, keys = readings_file(args.readings, args.devices, args.procs)
    with tempfile.TemporaryDirectory(prefix="iot-anchor-bench-mirror-") as tmp:
        gw, mdir = Path(tmp) / "gw", Path(tmp) / "mirror"
        init = subprocess.run(iot_anchor_command("init", "--data", str(gw)), capture_output=True,
                              text=True)
        if init.returncode != 0:
            raise AnchorError(f"iot-anchor init failed: {init.stderr.strip()}", "see above")
        with Store.open(gw) as store:
            for dev, key in keys.items():
                registry.add(store, dev, key)
        log(f"ingesting {path} ...")
        ing = subprocess.run(iot_anchor_command("ingest", "--binary", str(path), "--data",
                                                str(gw), "--json"), capture_output=True, text=True)
        if ing.returncode != 0:
            raise AnchorError(f"ingest failed: {ing.stderr.strip()[-300:]}", "see above")
        readings = int(json.loads(ing.stdout.strip().splitlines()[-1])["accepted"])
        vkey = (gw / VKEY_NAME).read_text().strip()
        log("baseline: cryptography's raw verify rate ...")
        per = max(2000, min(20000, readings // args.workers))
        raw = raw_verify_rate(args.workers, per)
        server = subprocess.Popen(iot_anchor_command("serve", "--data", str(gw), "--http",
                                                     "127.0.0.1:0"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if " on " not in line:
                raise AnchorError(f"serve did not start: {line!r}", "see its error")
            url = line.rsplit(" on ", 1)[1].strip()
            log(f"mirroring {readings:,} readings from {url} ...")
            res, peak = peak_rss_of(iot_anchor_command(
                "mirror", url, "--data", str(mdir), "--gateway-key", vkey,
                "--workers", str(args.workers)))
        finally:
            server.terminate()
            server.wait(10)
        if res["rc"] != 0:
            raise AnchorError(f"mirror failed ({res['rc']}): {res['err'].strip()[-300:]}",
                              "a bug to report")
        wall = res["wall_s"]
        rss = res["rss"]
        quarters = [max((r for t, r in rss if wall * (q - 1) / 4 < t <= wall * q / 4),
                        default=0.0) for q in (1, 2, 3, 4)]
    rate = readings / wall
    out = {"readings": readings, "devices": args.devices, "workers": args.workers,
           "mirror_s": round(wall, 2), "mirror_readings_per_s": round(rate),
           "raw_verify_per_s": round(raw), "ratio_to_raw_verify": round(rate / raw, 3),
           "peak_rss_mb": round(peak, 1), "rss_by_quarter_mb": [round(q, 1) for q in quarters]}
    print(f"mirror catch-up: {readings:,} readings in {wall:.1f} s = {rate:,.0f} readings/s, "
          f"{rate / raw:.2f} x cryptography's raw verify rate ({raw:,.0f}/s on {args.workers} "
          f"processes); peak RSS {peak:.0f} MB, by quarter "
          f"{', '.join(f'{q:.0f}' for q in quarters)} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    run_main(main)
