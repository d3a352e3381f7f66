"""Hostile input through `iot-anchor ingest`: every bad message is rejected by its reason, the
valid readings between them are all anchored, and the process never crashes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cbor2

from gateway.ingest.pipeline import REASONS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers_readings import Device, high_s_twin  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXE = str(ROOT / ".venv" / "bin" / "iot-anchor")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IOT_ANCHOR_DATA"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, env=env)


def nested(depth: int) -> bytes:
    return b"\x81" * depth + b"\x01"


def test_hostile_ingest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("init", "--data", str(data)).returncode == 0
    devs = [Device(f"good-{i}") for i in range(3)]
    for d in devs:
        assert run("device", "add", d.id, "--public-key", d.public_hex,
                   "--data", str(data)).returncode == 0
    stranger = Device("stranger")
    rng = random.Random(7)
    a = devs[0]
    sample = a.message(10_000, bytes(32))
    p, _, payload, sig = cbor2.loads(sample).value

    def wrap(protected: bytes, payload_: bytes, sig_: bytes, tag: int = 18) -> bytes:
        return cbor2.dumps(cbor2.CBORTag(tag, [protected, {}, payload_, sig_]))

    hostile: list[tuple[bytes, str | None]] = [
        (sample[:-5], "cbor_malformed"),  # truncated
        (sample[:20], "cbor_malformed"),
        (sample + b"\x00\x01", "trailing_bytes"),  # over-long
        (wrap(p, payload, sig, tag=98), "not_tag18"),
        (wrap(p, payload, sig, tag=17), "not_tag18"),
        (cbor2.dumps([p, {}, payload, sig]), "not_tag18"),
        (a.message(10_001, bytes(32), alg=-35), "unsupported_alg"),
        (a.message(10_002, bytes(32), alg=-8), "unsupported_alg"),
        (a.message(10_003, bytes(32), dev="good-1"), "dev_kid_mismatch"),
        (stranger.next(), "unknown_device"),
        (high_s_twin(a.message(10_004, bytes(32))), "high_s"),
        (b"\xd2\x84\x5b" + b"\xff" * 8, "cbor_malformed"),  # bstr of 2**64-1 bytes
        (b"\xd2\x84\x43\xa0\xa0\xa0\xa0\x5a\xff\xff\xff\xf0", "cbor_malformed"),
        (wrap(p, b"\xbb" + b"\x7f" + b"\xff" * 7, sig), "cbor_malformed"),  # map of 2**63 pairs
        (wrap(p, cbor2.dumps({**cbor2.loads(payload), "x": 0})[:-1] + nested(500), sig),
         "too_deep"),
        (b"\xd2" + nested(1500), "not_array4"),
        (b"\xd2\x84" + b"\x9f" * 100, "cbor_malformed"),  # indefinite arrays
        (sample + bytes(3000), "too_large"),
        (sample[:-1] + bytes([sample[-1] ^ 0x40]), "bad_signature"),
    ]
    hostile += [(rng.randbytes(rng.randint(1, 300)), None) for _ in range(200)]

    lines: list[str] = []
    valid: list[bytes] = []
    per_dev = {d.id: 0 for d in devs}
    for i, (bad, _) in enumerate(hostile):
        d = devs[i % 3]
        m = d.next({"t": i})
        valid.append(m)
        per_dev[d.id] += 1
        lines += [m.hex(), bad.hex()]
    f = tmp_path / "hostile.hex"
    f.write_text("\n".join(lines) + "\n")
    r = run("ingest", str(f), "--json", "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    summary = json.loads(r.stdout)
    assert summary["accepted"] == len(valid)
    rejected = summary["rejected"]
    assert sum(rejected.values()) + summary["duplicate"] == len(hostile)
    assert set(rejected) <= set(REASONS)
    want: dict[str, int] = {}
    for _, reason in hostile:
        if reason:
            want[reason] = want.get(reason, 0) + 1
    for reason, n in want.items():
        assert rejected.get(reason, 0) >= n, (reason, rejected)
    # every valid reading is anchored, with no gap
    st = json.loads(run("ledger", "status", "--json", "--data", str(data)).stdout)
    assert st["readings"] == len(valid)
    for dev, n in per_dev.items():
        assert st["devices"][dev]["readings"] == n
        assert st["devices"][dev]["last_seq"] == n - 1 and st["devices"][dev]["gaps"] == []
    assert st["rejected"] == {k: v for k, v in rejected.items()}
    v = run("ledger", "verify", "--data", str(data))
    assert v.returncode == 0, v.stdout
