#!/usr/bin/env python3
"""Coverage-guided fuzzing of the strict reading decoder (gateway/wire/cose.py) with atheris.

    .venv/bin/python tools/fuzz_decoder.py [--seconds 60] [--corpus DIR] [--seed N]

libFuzzer mutates inputs guided by the decoder's branch coverage, starting from a seed corpus of
valid readings (and their truncations) written into --corpus (a temporary folder by default; a
folder you keep grows into a corpus that later runs start from). The target calls the unwrapped
parser `gateway.wire.cose.decode_unguarded` (not `decode`, whose catch-all would hide a crash),
and fails on: any exception other than `Rejection`; a rejection reason outside
`DECODE_REASONS`; an accepted message that cbor2 does not read back to the same fields; a
single input that takes more than 50 ms.

It stops after --seconds and prints one readable line, then one JSON object as its last line:
inputs tried, inputs per second, accepted, rejections by reason, coverage-guided corpus size.
Exit 0 if nothing failed; on a failure libFuzzer prints the input and writes it as crash-*
into --artifacts (the current folder by default), and the exit code is non-zero.

atheris has wheels for Linux x86_64 (CPython 3.11 to 3.13); where it does not install, the
hypothesis fuzz tests (tests/unit/test_fuzz_decoder.py) are the decoder's fuzzing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the platform
    print("atheris is not installed (it has wheels for Linux x86_64 only): "
          "pip install atheris, or use the hypothesis fuzz tests", file=sys.stderr)
    sys.exit(2)

import cbor2  # noqa: E402

with atheris.instrument_imports(include=["gateway"]):
    from gateway.wire import cose  # noqa: E402

MAX_SECONDS_PER_INPUT = 0.05
stats: collections.Counter[str] = collections.Counter()
state = {"deadline": 0.0, "start": 0.0, "corpus": ""}


def seeds() -> list[bytes]:
    """Valid readings of several shapes (signatures are not checked by the decoder)."""
    out = []
    for dev, seq, ts, data, extra in (
        ("dev-01", 0, 1_760_000_000, {"t": 21.5, "rh": 40}, {}),
        ("sensor-0000000042", 2**40, None, {}, {}),
        ("x" * 64, 2**63 - 1, 0, {"a": -1, "b": 1.0e300, "c": float("nan")}, {"fw": [1, {2: b""}]}),
    ):
        fields = {"v": 1, "dev": dev, "seq": seq, "prev": bytes(32), "data": data, **extra}
        if ts is not None:
            fields["ts"] = ts
        protected = cbor2.dumps({1: -7, 4: dev.encode()}, canonical=True)
        payload = cbor2.dumps(fields, canonical=True)
        msg = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, bytes(range(64))]),
                          canonical=True)
        out += [msg, msg[: len(msg) // 2], msg[:-1]]
    return out


def check_accepted(msg: bytes, d: cose.Decoded) -> None:
    outer = cbor2.loads(msg)
    assert isinstance(outer, cbor2.CBORTag) and outer.tag == 18, "accepted a non-tag-18 item"
    protected, unprotected, payload, signature = outer.value
    assert unprotected == {} and len(signature) == 64 == len(d.signature)
    assert cbor2.loads(protected) == {1: -7, 4: d.dev.encode()}, "protected header differs"
    fields = cbor2.loads(payload)
    assert fields["dev"] == d.dev and fields["seq"] == d.seq and fields["prev"] == d.prev
    assert fields["v"] == 1 and fields.get("ts") == d.ts


def finish() -> None:
    elapsed = time.monotonic() - state["start"]
    tried = sum(stats.values())
    corpus = len(os.listdir(state["corpus"])) if state["corpus"] else 0
    reasons = {k: v for k, v in sorted(stats.items()) if k != "accepted"}
    print(f"atheris: {tried} inputs in {elapsed:.1f} s ({tried / elapsed:.0f}/s), "
          f"{stats['accepted']} accepted, {tried - stats['accepted']} rejected by reason, "
          f"no crash; corpus {corpus} inputs", flush=True)
    print(json.dumps({"inputs": tried, "seconds": round(elapsed, 1),
                      "per_second": round(tried / elapsed), "accepted": stats["accepted"],
                      "rejected": reasons, "corpus": corpus, "crashes": 0}), flush=True)
    os._exit(0)


def _time_once(data: bytes) -> float:
    t0 = time.perf_counter()
    try:
        cose.decode_unguarded(data, cose.MAX_MESSAGE)
    except cose.Rejection:
        pass
    return time.perf_counter() - t0


def test_one_input(data: bytes) -> None:
    t0 = time.perf_counter()
    try:
        d = cose.decode_unguarded(data, cose.MAX_MESSAGE)
    except cose.Rejection as r:
        if r.reason not in cose.DECODE_REASONS:
            raise AssertionError(f"unnamed rejection reason {r.reason!r}") from None
        stats[r.reason] += 1
    else:
        check_accepted(data, d)
        stats["accepted"] += 1
    took = time.perf_counter() - t0
    if took > MAX_SECONDS_PER_INPUT:
        # On a shared machine one run can be descheduled: only the best of five counts.
        took = min(_time_once(data) for _ in range(5))
        if took > MAX_SECONDS_PER_INPUT:
            raise AssertionError(f"decoding {len(data)} bytes took {took * 1000:.1f} ms")
    if time.monotonic() > state["deadline"]:
        finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz (default 60)")
    ap.add_argument("--corpus", help="corpus folder to use and grow (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0, help="libFuzzer seed (0: random)")
    ap.add_argument("--artifacts", default="./",
                    help="where a failing input is written as crash-* (default: ./)")
    args = ap.parse_args()
    tmp = None
    if args.corpus:
        corpus = Path(args.corpus)
        corpus.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fuzz-decoder-")
        corpus = Path(tmp.name)
    for i, s in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(s)
    state["corpus"] = str(corpus)
    state["start"] = time.monotonic()
    state["deadline"] = state["start"] + args.seconds
    libfuzzer_args = [sys.argv[0], str(corpus), f"-max_len={cose.MAX_MESSAGE + 64}",
                      f"-seed={args.seed}", "-print_final_stats=0", "-close_fd_mask=0",
                      f"-max_total_time={int(args.seconds) + 30}",
                      f"-artifact_prefix={args.artifacts.rstrip('/')}/"]
    atheris.Setup(libfuzzer_args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
