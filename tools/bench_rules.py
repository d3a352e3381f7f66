"""The rules' cost per reading: the pipeline with 20 rules applied against the same pipeline
without rules, in the same run, on the same pre-signed readings (docs/rules.md, "Cost").

    .venv/bin/python tools/bench_rules.py [--devices 100] [--readings 20000] [--runs 3]
                                          [--rules FILE] [--gc-young N]

Each run feeds the readings through `gateway.ingest.pipeline.Pipeline` as `iot-anchor ingest`
does (2 verifier processes, batches of 4096, the collector's threshold of every `iot-anchor`
command unless --gc-young says otherwise) into a fresh data directory: with no rule set, with
the rules applied, and with one rule that fires on every reading (what a firing costs: its
action entry and checkpoint), in turn. Measured per reading: the main process's CPU time
(user + system, from getrusage: the commit's part of the rules), the part of it spent in the
cyclic garbage collector (gc.callbacks), the verifier processes' CPU time (getrusage of the
children, once the pool has ended) and the wall time. Also the
engine alone (decoding the payload and evaluating the rules, no SQLite), the firings, and
`ledger verify` over the result (which re-runs the rules). The default rule set
(`twenty_rules`) mixes thresholds on the load engine's sensors (temp 17..25, rh 40..59),
`for`, cooldowns, device filters, conditions on the rule's state, a silence rule and a
rejections rule. Figures are medians over --runs; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.audit.store_audit import audit  # noqa: E402
from gateway.cli import GC_YOUNG, tuned_collector  # noqa: E402
from gateway.fleet import registry  # noqa: E402
from gateway.ingest.pipeline import Pipeline, feed  # noqa: E402
from gateway.ledger.merkle import leaf_hash  # noqa: E402
from gateway.rules.parse import parse_rules  # noqa: E402
from gateway.rules.runtime import reading_input  # noqa: E402
from gateway.sim import loadgen  # noqa: E402
from gateway.storage.store import Store  # noqa: E402
from gateway.wire.signer import DeviceSigner  # noqa: E402


def twenty_rules() -> str:
    rules = []
    for k in range(8):  # thresholds on temp: the first fires now and then, the others never
        rules.append(f'[[rule]]\nname = "temp-{k}"\nwhen = "data.temp > {24.9 + k}"\n'
                     f'cooldown = 300\naction = {{ type = "alert" }}\n')
    for k in range(4):
        rules.append(f'[[rule]]\nname = "rh-{k}"\nwhen = "data.rh >= {56 + k}"\nfor = 3\n'
                     f'cooldown = 300\naction = {{ type = "alert" }}\n')
    for k in range(3):
        rules.append(f'[[rule]]\nname = "both-{k}"\nwhen = "has(data.temp) && data.temp > 24.0 '
                     f'&& data.rh < {41 + k}"\ncooldown = 300\naction = {{ type = "alert" }}\n')
    rules.append('[[rule]]\nname = "dev-filter"\nwhen = "data.temp < 18.0"\n'
                 'devices = ["load-0000", "load-0001"]\naction = { type = "alert" }\n')
    rules.append('[[rule]]\nname = "state-once"\nwhen = "data.temp > 24.5 && state.fired < 1"\n'
                 'action = { type = "alert" }\n')
    rules.append('[[rule]]\nname = "absent"\nwhen = "data.pressure > 1000.0"\n'
                 'action = { type = "alert" }\n')
    rules.append('[[rule]]\nname = "quiet"\nsilence = 600\naction = { type = "alert" }\n')
    rules.append('[[rule]]\nname = "forged"\nrejections = { reason = "bad_signature", '
                 'count = 5, within = 60 }\naction = { type = "alert" }\n')
    return "\n".join(rules)


EVERY = '[[rule]]\nname = "every"\nwhen = "data.temp > -100.0"\naction = { type = "alert" }\n'


def make_readings(devices: int, total: int) -> tuple[list[DeviceSigner], list[bytes]]:
    signers = [DeviceSigner.generate(f"load-{i:04d}") for i in range(devices)]
    per = max(1, total // devices)
    out: list[list[tuple[int, bytes]]] = []
    for i, s in enumerate(signers):
        out.append(loadgen.presign(loadgen.DeviceState(s.dev, s.secret), i, per))
    msgs = [out[i][k][1] for k in range(per) for i in range(devices)]  # interleaved
    return signers, msgs


def one_run(workdir: Path, signers: list[DeviceSigner], msgs: list[bytes],
            rules: str | None) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(dir=workdir))
    shutil.rmtree(d)
    store, _ = Store.create(d)
    for s in signers:
        registry.add(store, s.dev, s.public_key)
    if rules is not None:
        store.apply_rules(store.load_signer(), rules, hashlib.sha256(rules.encode()).digest())
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    collector = [0.0, 0.0]  # CPU seconds in the cyclic collector; the start of a pass

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collector[1] = time.thread_time()
        else:
            collector[0] += time.thread_time() - collector[1]

    with Pipeline(store, batch_max=4096, workers=2, owns_store=True) as pipe:
        pipe.pool.start()
        chunks = [msgs[k:k + 1024] for k in range(0, len(msgs), 1024)]
        gc.callbacks.append(timed)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        try:
            feed(pipe, chunks)
        finally:
            gc.callbacks.remove(timed)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        firings = len(pipe.store.records("action"))
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the verifiers, ended with the pool
    with Store.open(d, readonly=True) as ro:
        t0 = time.perf_counter()
        res = audit(ro, ro.vkey(), workers=2)
        audit_s = time.perf_counter() - t0
        assert res.ok, res.problems[:3]
    shutil.rmtree(d)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    kids = (kids1.ru_utime - kids0.ru_utime) + (kids1.ru_stime - kids0.ru_stime)
    return {"cpu_us": cpu / len(msgs) * 1e6, "wall_us": wall / len(msgs) * 1e6,
            "workers_cpu_us": kids / len(msgs) * 1e6, "gc_us": collector[0] / len(msgs) * 1e6,
            "firings": firings, "audit_per_s": len(msgs) / audit_s}


def engine_only(rules: str, msgs: list[bytes]) -> float:
    """CPU µs per reading: decode the payload and run the engine (no SQLite, no signatures)."""
    from gateway.rules.engine import Engine
    from gateway.wire.cose import decode

    eng = Engine(parse_rules(rules), 0)
    items = []
    for m in msgs:
        d = decode(m)
        items.append((m, d.dev, d.seq, leaf_hash(m)))
    t0 = time.process_time()  # CPU time: this runs in one thread
    for k in range(0, len(items), 4096):
        eng.begin()
        eng.batch([reading_input(*x) for x in items[k:k + 4096]], 1000 + k)
        eng.commit()
    return (time.process_time() - t0) / len(items) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--readings", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rules", type=Path, metavar="FILE", help="a rule file (default: 20 rules)")
    ap.add_argument("--gc-young", type=int, default=GC_YOUNG, metavar="N",
                    help=f"the collector's young-generation threshold (default {GC_YOUNG}, as "
                         "every iot-anchor command; Python's own is 700)")
    ap.add_argument("--print", action="store_true",
                    help="print the default 20-rule file and exit (for tools/bench.py --rules)")
    args = ap.parse_args(argv)
    if args.print:
        print(twenty_rules())
        return 0
    tuned_collector(args.gc_young)  # as every iot-anchor command runs, unless --gc-young
    rules = args.rules.read_text() if args.rules else twenty_rules()
    n_rules = len(parse_rules(rules).rules)
    signers, msgs = make_readings(args.devices, args.readings)
    workdir = Path(tempfile.mkdtemp(prefix="iot-anchor-bench-rules-"))
    base: list[dict[str, float]] = []
    with_rules: list[dict[str, float]] = []
    every: list[dict[str, float]] = []  # one rule that fires on every reading
    try:
        for _ in range(args.runs):
            base.append(one_run(workdir, signers, msgs, None))
            with_rules.append(one_run(workdir, signers, msgs, rules))
            every.append(one_run(workdir, signers, msgs, EVERY))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    eng = statistics.median(engine_only(rules, msgs) for _ in range(args.runs))

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    out: dict[str, Any] = {
        "readings": len(msgs), "devices": args.devices, "rules": n_rules, "runs": args.runs,
        "main_cpu_us_per_reading": {"without_rules": round(med(base, "cpu_us"), 2),
                                    "with_rules": round(med(with_rules, "cpu_us"), 2)},
        "verifier_cpu_us_per_reading": {"without_rules": round(med(base, "workers_cpu_us"), 2),
                                        "with_rules": round(med(with_rules, "workers_cpu_us"),
                                                            2)},
        "wall_us_per_reading": {"without_rules": round(med(base, "wall_us"), 2),
                                "with_rules": round(med(with_rules, "wall_us"), 2)},
        "engine_us_per_reading": round(eng, 2),
        "ledger_verify_readings_per_s": {"without_rules": round(med(base, "audit_per_s")),
                                         "with_rules": round(med(with_rules, "audit_per_s"))},
        "firings": int(med(with_rules, "firings")),
        "gc_young": args.gc_young,
        "collector_us_per_reading": {"without_rules": round(med(base, "gc_us"), 2),
                                     "with_rules": round(med(with_rules, "gc_us"), 2)},
    }
    cpu = out["main_cpu_us_per_reading"]
    wall = out["wall_us_per_reading"]
    vcpu = out["verifier_cpu_us_per_reading"]
    out["rules_cpu_us_per_reading"] = round(cpu["with_rules"] - cpu["without_rules"], 2)
    # what one firing costs: its action entry and checkpoint, in the batch's transaction
    out["cpu_us_per_firing"] = round(med(every, "cpu_us") - cpu["without_rules"], 2)
    out["cpu_ratio"] = round(cpu["with_rules"] / cpu["without_rules"], 3)
    out["wall_ratio"] = round(wall["with_rules"] / wall["without_rules"], 3)
    print(f"{n_rules} rules over {len(msgs)} readings ({args.devices} devices, median of "
          f"{args.runs}): main-process CPU {cpu['without_rules']:.1f} -> {cpu['with_rules']:.1f} "
          f"us per reading (+{out['rules_cpu_us_per_reading']:.1f}, ratio {out['cpu_ratio']}); "
          f"the verifier processes {vcpu['without_rules']:.1f} -> {vcpu['with_rules']:.1f} us; "
          f"wall {wall['without_rules']:.1f} -> {wall['with_rules']:.1f} us (ratio "
          f"{out['wall_ratio']}); the engine alone {eng:.1f} us; {out['firings']} firings; "
          f"a firing (action entry + checkpoint) costs {out['cpu_us_per_firing']:.1f} us; "
          f"ledger verify {out['ledger_verify_readings_per_s']['without_rules']} -> "
          f"{out['ledger_verify_readings_per_s']['with_rules']} readings/s (re-running the "
          f"rules); of the main process's CPU the cyclic collector (threshold {args.gc_young}) "
          f"{out['collector_us_per_reading']['without_rules']:.1f} -> "
          f"{out['collector_us_per_reading']['with_rules']:.1f} us per reading")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
