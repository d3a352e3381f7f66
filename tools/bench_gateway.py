#!/usr/bin/env python3
"""`make bench-gateway`: gateway-core figures, each against a baseline measured in the same run.

1. ingest throughput: pre-signed readings (firmware-identical bytes, gateway.sim.loadgen) through
   `Pipeline.submit` + `commit` (the verifier's worker processes, batches of --batch-max,
   SQLite commits), against a bare `cryptography` verify loop over the same messages on the
   same number of threads (DER signatures and Sig_structures prepared beforehand, so the
   baseline is pure verification). Goal: ratio >= 0.8. Also against the same loop starting
   from the message bytes (cbor2 decoding, Sig_structure, DER per message: the least a
   verifier must do), and the pipeline with its verifier on threads instead of processes
   (`VerifierPool(processes=False)`; why the default is processes).
2. `ledger verify` rate (the full audit: signatures, roots, chain, checkpoints), readings/s.
   Goal: >= 20,000 readings/s.
3. receipt build (database lookups + proofs) and offline verify (checkpoint signature, two
   inclusion proofs, the device signature): median ms. Goal: <= 2 ms each.

Prints a readable summary, then one JSON object as the last line. `--profile` also prints the
top of a cProfile of the ingest run (to stderr).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import cbor2
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audit.store_audit import audit  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.ingest.pipeline import Outcome, Pipeline, feed  # noqa: E402
from gateway.ledger.receipt import build_receipt, verify_receipt  # noqa: E402
from gateway.storage.store import Store  # noqa: E402
from gateway.wire.cose import decode  # noqa: E402
from gateway.wire.es256 import ES256, load_public_key  # noqa: E402
from gateway.wire.signer import DeviceSigner  # noqa: E402

T = TypeVar("T")


def presign(devices: int, per_device: int) -> tuple[list[bytes], dict[str, bytes]]:
    import hashlib

    signers = [DeviceSigner.generate(f"bench-{i:03d}") for i in range(devices)]
    per: list[list[bytes]] = []
    for s in signers:
        prev = bytes(32)
        out = []
        for seq in range(per_device):
            m = s.sign(seq, prev, {"t": 20.5 + (seq % 40) / 8, "h": 40 + seq % 20,
                                   "p": 1013.25}, ts=1_760_000_000 + seq)
            prev = hashlib.sha256(m).digest()
            out.append(m)
        per.append(out)
    msgs = [per[d][i] for i in range(per_device) for d in range(devices)]
    return msgs, {s.dev: s.public_key for s in signers}


def seconds_on_threads(run: Callable[[T], None], parts: Sequence[T]) -> float:
    """Wall time to run `run(part)` for every part at once, each on its own thread."""
    threads = [threading.Thread(target=run, args=(part,)) for part in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def bare_verify_rate(msgs: list[bytes], keys: dict[str, bytes], threads: int) -> float:
    pubs = {d: load_public_key(k) for d, k in keys.items()}
    work = []
    for m in msgs:
        d = decode(m)
        r, s = int.from_bytes(d.signature[:32], "big"), int.from_bytes(d.signature[32:], "big")
        work.append((pubs[d.dev], encode_dss_signature(r, s), d.to_be_signed))
    parts = [work[i::threads] for i in range(threads)]

    def run(part: list) -> None:
        for pub, sig, tbs in part:
            pub.verify(sig, tbs, ES256)

    return len(msgs) / seconds_on_threads(run, parts)


def message_verify_rate(msgs: list[bytes], keys: dict[str, bytes], threads: int) -> float:
    """The same loop, but starting from the message bytes as a minimal verifier would: cbor2
    decodes the message and the protected header (for the kid), encodes the Sig_structure,
    DER-encodes r||s and verifies. No strictness, no hashing, no storage."""
    pubs = {d.encode(): load_public_key(k) for d, k in keys.items()}
    parts = [msgs[i::threads] for i in range(threads)]

    def run(part: list[bytes]) -> None:
        for m in part:
            protected, _, payload, sig = cbor2.loads(m).value
            kid = cbor2.loads(protected)[4]
            tbs = cbor2.dumps(["Signature1", protected, b"", payload])
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                       int.from_bytes(sig[32:], "big"))
            pubs[kid].verify(der, tbs, ES256)

    return len(msgs) / seconds_on_threads(run, parts)


def ingest_rate(store: Store, msgs: list[bytes], workers: int, batch_max: int,
                profile: bool, processes: bool = True) -> tuple[float, str]:
    prof = cProfile.Profile() if profile else None
    chunk = 1024
    accepted = 0

    def count(outs: list[Outcome]) -> None:
        nonlocal accepted
        accepted += sum(o.status == "accepted" for o in outs)

    with Pipeline(store, batch_max=batch_max, workers=workers, processes=processes) as p:
        p.pool.start(wait=True)  # the worker processes' start-up (0.1 s) is not throughput
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        feed(p, (msgs[i:i + chunk] for i in range(0, len(msgs), chunk)), count)
        if prof:
            prof.disable()
        dt = time.perf_counter() - t0
    if accepted != len(msgs):
        raise SystemExit(f"bench: only {accepted} of {len(msgs)} readings were accepted")
    text = ""
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
        text = buf.getvalue()
    return len(msgs) / dt, text


def receipt_times(store: Store, vkey: str, keys: dict[str, bytes], msgs: list[bytes],
                  n: int) -> tuple[float, float]:
    rng = random.Random(1)
    build, check = [], []
    for _ in range(n):
        d = decode(rng.choice(msgs))
        t0 = time.perf_counter()
        parts = store.receipt_parts(d.dev, d.seq)
        assert parts is not None
        rec = build_receipt(**parts)
        t1 = time.perf_counter()
        verify_receipt(rec, vkey, keys[d.dev])
        t2 = time.perf_counter()
        build.append((t1 - t0) * 1000)
        check.append((t2 - t1) * 1000)
    return statistics.median(build), statistics.median(check)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (best is kept)")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-max", type=int, default=4096)
    ap.add_argument("--receipts", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the ingest")
    args = ap.parse_args()

    per = max(1, args.readings // args.devices)
    t0 = time.perf_counter()
    msgs, keys = presign(args.devices, per)
    sign_s = time.perf_counter() - t0
    print(f"pre-signed {len(msgs)} readings from {args.devices} devices in {sign_s:.1f} s "
          f"({statistics.mean(map(len, msgs)):.0f} bytes each)")

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        # The machine is shared: baseline and pipeline alternate, `--rounds` times each, on a
        # fresh data directory per round, and the best round of each is compared.
        bases: list[float] = []
        mbases: list[float] = []
        rates: list[float] = []
        trates: list[float] = []
        prof = ""
        store = vkey = None
        for r in range(args.rounds):
            if store is not None:
                store.close()
            store, vkey = Store.create(Path(tmp) / f"data{r}")
            for dev, key in keys.items():
                registry.add(store, dev, key)
            bases.append(bare_verify_rate(msgs, keys, args.workers))
            mbases.append(message_verify_rate(msgs, keys, args.workers))
            rate, text = ingest_rate(store, msgs, args.workers, args.batch_max,
                                     args.profile and r == 0)
            rates.append(rate)
            prof = prof or text
            tstore, _ = Store.create(Path(tmp) / f"threads{r}")
            for dev, key in keys.items():
                registry.add(tstore, dev, key)
            trates.append(ingest_rate(tstore, msgs, args.workers, args.batch_max, False,
                                      processes=False)[0])
            tstore.close()
        assert store is not None and vkey is not None
        baseline, mbaseline, rate, trate = max(bases), max(mbases), max(rates), max(trates)
        ratio, mratio = rate / baseline, rate / mbaseline

        def runs(xs: list[float]) -> str:
            return ", ".join(f"{x:,.0f}" for x in xs)

        print(f"ingest: {rate:,.0f} readings/s through the pipeline (best of {runs(rates)})")
        print(f"  bare cryptography verify on {args.workers} threads, signatures and "
              f"Sig_structures extracted beforehand: {baseline:,.0f}/s (best of {runs(bases)}); "
              f"ratio {ratio:.2f} (goal >= 0.8)")
        print(f"  the same loop starting from the message bytes (cbor2 decode, Sig_structure, "
              f"DER): {mbaseline:,.0f}/s (best of {runs(mbases)}); ratio {mratio:.2f}")
        print(f"  the pipeline with its verifier on {args.workers} threads instead of worker "
              f"processes: {trate:,.0f}/s (best of {runs(trates)}); ratio {trate / baseline:.2f}")
        vrates = []
        for _ in range(args.rounds):
            res = audit(store, vkey, workers=args.workers)
            if not res.ok:
                raise SystemExit(f"bench: the audit failed: {res.problems[0]}")
            vrates.append(res.readings / res.seconds)
        vrate = max(vrates)
        print(f"ledger verify: {res.readings} readings, {res.entries} entries: "
              f"{vrate:,.0f} readings/s (best of {', '.join(f'{x:,.0f}' for x in vrates)}; "
              f"goal >= 20,000); ratio to bare verify {vrate / baseline:.2f}")
        b_ms, v_ms = receipt_times(store, vkey, keys, msgs, args.receipts)
        print(f"receipt: build {b_ms:.3f} ms, verify {v_ms:.3f} ms median over "
              f"{args.receipts} (goal <= 2 ms each)")
        db_bytes = sum(f.stat().st_size for f in store.data_dir.glob("ledger.db*"))
        print(f"database: {db_bytes / len(msgs):.0f} bytes per reading")
        store.close()
    if prof:
        print(prof, file=sys.stderr)
    print(json.dumps({
        "readings": len(msgs), "devices": args.devices, "workers": args.workers,
        "batch_max": args.batch_max, "cpus": os.cpu_count(),
        "ingest_per_s": round(rate), "bare_verify_per_s": round(baseline),
        "ingest_ratio": round(ratio, 3), "message_verify_per_s": round(mbaseline),
        "ingest_ratio_message_loop": round(mratio, 3), "rounds": args.rounds,
        "ingest_threads_per_s": round(trate), "ingest_threads_ratio": round(trate / baseline, 3),
        "ledger_verify_per_s": round(vrate),
        "receipt_build_ms": round(b_ms, 3), "receipt_verify_ms": round(v_ms, 3),
        "db_bytes_per_reading": round(db_bytes / len(msgs)),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
