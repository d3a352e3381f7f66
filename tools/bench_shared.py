"""`make bench BENCH_ARGS="--gateways N"`: the parts of several gateways on one PostgreSQL ledger.

    .venv/bin/python tools/bench.py --gateways 3 [--readings 36864] [--devices 200]
                                    [--batch-max 4096]
    .venv/bin/python tools/bench_shared.py --gateways 3 ...        (the same)

Everything runs on this machine, against a private PostgreSQL cluster (gateway/sim/postgres.py,
fsync on). The load: D devices (load-engine keys), R readings pre-signed once, the firmware's
bytes. What is measured, each in the same run:

1. verify (the baseline): the gateway's per-reading check (`pipeline.check_chunk`: decode, ES256
   verify, hashes) on one core, in this process: CPU µs per reading.
2. one gateway: a Pipeline on the PostgreSQL store (verification in process, so its CPU is the
   gateway's whole per-reading work), batches of --batch-max: per batch, the commit's wall
   time, the sequencer lock's hold time (from its grant to the end of the COMMIT), and the
   statements (round trips) it sent; the database round trip (`SELECT 1`) for scale.
3. N gateways at once: N processes, each a Pipeline as in 2, the readings handed out round
   robin as a shared subscription does (every device's readings spread over all of them):
   readings anchored per second together, each gateway's CPU per reading, the hold and wait
   times of the sequencer; then `ledger verify` on the result (one chain).

Figures are given as ratios to the verify cost measured in the same run. From them:
  ledger limit (readings/s) = batch / hold time per batch   (the sequencer is serial)
  gateway limit (readings/s per core) = 1 / CPU per reading
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audit.store_audit import audit  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.ingest import pipeline as pl  # noqa: E402
from gateway.sim import loadgen  # noqa: E402
from gateway.sim.postgres import PrivatePostgres  # noqa: E402
from gateway.storage.store import Store  # noqa: E402
from gateway.wire.signer import DeviceSigner  # noqa: E402

CHUNK = 1024


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_load(n_dev: int, readings: int, tmp: Path) -> tuple[list[loadgen.DeviceState],
                                                            list[list[bytes]]]:
    states = loadgen.load_or_create_states(tmp / "fleet", [f"b-{i:04d}" for i in range(n_dev)])
    per = -(-readings // n_dev)
    msgs = [[m for _, m in loadgen.presign(st, i, per)] for i, st in enumerate(states)]
    return states, msgs


def interleave(msgs: list[list[bytes]]) -> list[bytes]:
    """Seq by seq across devices, as a fleet publishes."""
    out = []
    for k in range(max(len(m) for m in msgs)):
        out += [m[k] for m in msgs if k < len(m)]
    return out


def measure_verify(stream: list[bytes], store: Store) -> float:
    """CPU µs per reading of the gateway's check (decode, verify, hashes), one core."""
    sent = {row.id: (bytes(row.key), row.status) for row in store.devices()}
    ctx = pl.prepare_keys((2048, sent, False))
    items = [(m, None) for m in stream[:4096]]
    pl.check_chunk(ctx, items[:256])  # warm the key objects
    t0 = cpu_s()
    out = pl.check_chunk(ctx, items)
    dt = cpu_s() - t0
    assert all(not isinstance(o, str) for o in out), "the load must verify"
    return dt / len(items) * 1e6


def run_gateway(url: str, data: str, share: list[bytes], batch: int, q: Any) -> None:
    """One gateway's pipeline: feed `share` in chunks, commit every `batch` readings."""
    store = Store.open(data, store=url)
    p = pl.Pipeline(store, batch_max=batch, workers=1, processes=False)
    holds, waits, stmts, commits = [], [], [], []
    commit_cpu = 0.0
    t0, c0 = time.perf_counter(), cpu_s()
    for k in range(0, len(share), CHUNK):
        p.submit(share[k:k + CHUNK])
        if p.pending() >= batch:
            s0 = store.conn.statements
            w0, cc = time.perf_counter(), cpu_s()
            p.commit()
            commit_cpu += cpu_s() - cc
            commits.append(time.perf_counter() - w0)
            stmts.append(store.conn.statements - s0)
            waits.append(p.sequencer[0])
            holds.append(p.sequencer[1])
    cc = cpu_s()
    p.commit()
    commit_cpu += cpu_s() - cc
    q.put({"wall": time.perf_counter() - t0, "cpu": cpu_s() - c0, "readings": len(share),
           "commit_cpu": commit_cpu, "holds": holds, "waits": waits, "statements": stmts,
           "commits": commits, "t_end": time.time()})
    p.close()
    store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateways", type=int, default=3, metavar="N")
    ap.add_argument("--readings", type=int, default=36864, metavar="R")
    ap.add_argument("--devices", type=int, default=200, metavar="D")
    ap.add_argument("--batch-max", type=int, default=4096, metavar="B")
    args = ap.parse_args(argv)
    n, batch = args.gateways, args.batch_max
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp_s, PrivatePostgres() as pg:
        tmp = Path(tmp_s)
        t_sign = time.perf_counter()
        states, msgs = make_load(args.devices, args.readings, tmp)
        stream = interleave(msgs)
        sign_s = time.perf_counter() - t_sign
        results: dict[str, Any] = {"gateways": n, "batch_max": batch, "devices": args.devices,
                                   "readings": len(stream), "sign_s": round(sign_s, 2)}
        # 1. the baseline: verify, and the database round trip
        url1 = pg.create_database("one")
        s1, _ = Store.create(tmp / "one", url1)
        for st in states:
            registry.add(s1, st.dev, DeviceSigner(st.dev, st.secret).public_key)
        verify_us = measure_verify(stream, s1)
        rtts = []
        for _ in range(200):
            t = time.perf_counter()
            s1.conn.execute("SELECT 1").fetchone()
            rtts.append(time.perf_counter() - t)
        rtt_ms = statistics.median(rtts) * 1000
        s1.close()
        # 2. one gateway
        q: Any = multiprocessing.get_context("spawn").Queue()
        run_gateway(url1, str(tmp / "one"), stream, batch, q)
        one = q.get()
        # 3. N gateways, the readings round robin over them
        urln = pg.create_database("many")
        sn, vkey = Store.create(tmp / "many", urln)
        for st in states:
            registry.add(sn, st.dev, DeviceSigner(st.dev, st.secret).public_key)
        sn.close()
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        procs = [ctx.Process(target=run_gateway,
                             args=(urln, str(tmp / "many"), stream[k::n], batch, q))
                 for k in range(n)]
        t0 = time.time()
        for p in procs:
            p.start()
        many = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        wall_n = max(r["t_end"] for r in many) - t0
        with Store.open(tmp / "many", store=urln, readonly=True) as s:
            res = audit(s, vkey, workers=2)
            stored = s.reading_count()
    hold1 = statistics.median(one["holds"]) * 1000 if one["holds"] else 0.0
    holds_n = [h for r in many for h in r["holds"]]
    waits_n = [w for r in many for w in r["waits"]]
    per_batch = statistics.median(one["statements"]) if one["statements"] else 0
    gw_cpu_us = one["cpu"] / one["readings"] * 1e6
    gw_cpu_n = [r["cpu"] / r["readings"] * 1e6 for r in many]
    ledger_limit = batch / (hold1 / 1000) if hold1 else None
    results.update({
        "verify_us": round(verify_us, 1),
        "db_rtt_ms": round(rtt_ms, 3),
        "one": {"readings_per_s": round(one["readings"] / one["wall"]),
                "cpu_us_per_reading": round(gw_cpu_us, 1),
                "cpu_vs_verify": round(gw_cpu_us / verify_us, 2),
                "commit_cpu_us_per_reading": round(one["commit_cpu"] / one["readings"] * 1e6, 1),
                "commit_ms": round(statistics.median(one["commits"]) * 1000, 1)
                if one["commits"] else None,
                "hold_ms": round(hold1, 1),
                "hold_us_per_reading": round(hold1 * 1000 / batch, 2),
                "hold_vs_verify": round(hold1 * 1000 / batch / verify_us, 3),
                "statements_per_batch": per_batch},
        "many": {"readings_per_s": round(len(stream) / wall_n),
                 "cpu_us_per_reading": [round(x, 1) for x in gw_cpu_n],
                 "cpu_vs_verify": [round(x / verify_us, 2) for x in gw_cpu_n],
                 "commit_cpu_us_per_reading": [round(r["commit_cpu"] / r["readings"] * 1e6, 1)
                                               for r in many],
                 "hold_ms_median": round(statistics.median(holds_n) * 1000, 1) if holds_n
                 else None,
                 "hold_ms_max": round(max(holds_n) * 1000, 1) if holds_n else None,
                 "wait_ms_median": round(statistics.median(waits_n) * 1000, 1) if waits_n
                 else None,
                 "stored": stored, "ledger_verify": res.ok},
        "ledger_limit_readings_per_s": round(ledger_limit) if ledger_limit else None,
        "gateway_limit_readings_per_s_per_core": round(1e6 / gw_cpu_us),
    })
    print(f"verify (baseline): {verify_us:.1f} µs CPU per reading; database round trip "
          f"{rtt_ms:.3f} ms")
    o = results["one"]
    print(f"one gateway: {o['readings_per_s']:,} readings/s on one core, CPU "
          f"{o['cpu_us_per_reading']} µs/reading = {o['cpu_vs_verify']} x verify (commits "
          f"{o['commit_cpu_us_per_reading']} µs of it); per batch of "
          f"{batch}: commit {o['commit_ms']} ms, sequencer held {o['hold_ms']} ms "
          f"({o['hold_us_per_reading']} µs/reading = {o['hold_vs_verify']} x verify), "
          f"{per_batch} statements")
    m = results["many"]
    print(f"{n} gateways: {m['readings_per_s']:,} readings/s together, CPU per reading "
          f"{m['cpu_vs_verify']} x verify (commits {m['commit_cpu_us_per_reading']} µs), "
          f"sequencer held {m['hold_ms_median']} ms median "
          f"(max {m['hold_ms_max']}), waited {m['wait_ms_median']} ms median; {stored} stored, "
          f"ledger verify {'OK' if res.ok else 'BROKEN'}")
    print(f"limits: the sequencer {results['ledger_limit_readings_per_s']:,} readings/s "
          f"(batch {batch} / hold), a gateway {results['gateway_limit_readings_per_s_per_core']:,}"
          f" readings/s per core")
    print(json.dumps(results))
    return 0 if res.ok and stored == len(stream) else 1


if __name__ == "__main__":
    sys.exit(main())
