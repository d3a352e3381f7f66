"""The CPython load engine makes the firmware's bytes: same key, seq, ts, prev and data.

The firmware (`micropython firmware/main.py sign`) is the reference; the engine must produce
the identical COSE_Sign1 message, byte for byte, including the deterministic RFC 6979
signature after low-S normalisation. The data map is taken from the firmware's own message
(decoded with cbor2), so a float that MicroPython's JSON parser rounds differently still
compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import cbor2
import pytest
from conftest import run_mp

from gateway.sim.loadgen import DeviceState, ack_wait, presign, sensor_data, smoothed
from gateway.wire.signer import DeviceSigner

SECRETS = [
    # RFC 6979 A.2.5 private key, and two fixed others
    "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721",
    "0000000000000000000000000000000000000000000000000000000000000001",
    "7d7dc5f71eb29ddaf80d6214632eeae03d9058af1fb6d22ed80badb62bc1a534",
]

PAYLOADS = [
    ('{"temp": 21.5}', "1700000000"),
    ('{"t": 21.25, "rh": 40, "p": 1013.25}', "1700000001"),
    ('{"x": 0.1, "neg": -3, "big": 4294967296, "tiny": 1e-07}', "none"),
    ('{"a": -0.5, "bb": 65504.0, "ccc": 100000.0, "z": 3.4028234663852886e+38}', "1"),
    ('{"n": 0}', "4294967296"),
]


def _fw_sign(micropython: str, d: Path, data: str, ts: str) -> bytes:
    p = run_mp(micropython, "firmware/main.py", "sign", "--dir", str(d), "--data", data,
               "--ts", ts)
    assert p.returncode == 0, p.stderr
    return bytes.fromhex(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("secret", SECRETS + [os.urandom(32).hex() for _ in range(2)])
def test_engine_bytes_equal_firmware(micropython: str, tmp_path: Path, secret: str) -> None:
    if not 0 < int(secret, 16) < 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551:
        pytest.skip("random secret outside the group order")  # probability ~2**-32
    dev = "dev-" + secret[:6]
    d = tmp_path / dev
    p = run_mp(micropython, "firmware/main.py", "keygen", "--dir", str(d), "--id", dev,
               "--secret", secret)
    assert p.returncode == 0, p.stderr
    signer = DeviceSigner(dev, bytes.fromhex(secret))
    assert p.stdout.strip().splitlines()[-1] == signer.public_key.hex()

    prev = bytes(32)
    for seq, (data, ts) in enumerate(PAYLOADS):
        fw = _fw_sign(micropython, d, data, ts)
        reading = cbor2.loads(cbor2.loads(fw).value[2])
        assert reading["seq"] == seq and reading["prev"] == prev
        assert reading["data"] == pytest.approx(json.loads(data))
        assert reading.get("ts") == (None if ts == "none" else int(ts))
        ours = signer.sign(seq, prev, reading["data"], reading.get("ts"))
        assert ours.hex() == fw.hex(), f"seq {seq} data {data}"
        prev = hashlib.sha256(fw).digest()


def test_engine_sensor_stream_equals_firmware(micropython: str, tmp_path: Path) -> None:
    """The engine's own pre-signed stream, re-signed by the firmware from the same inputs."""
    rng = random.Random(7)
    secret = rng.randbytes(32).hex()
    d = tmp_path / "load-0003"
    assert run_mp(micropython, "firmware/main.py", "keygen", "--dir", str(d), "--id",
                  "load-0003", "--secret", secret).returncode == 0
    st = DeviceState("load-0003", bytes.fromhex(secret))
    msgs = presign(st, 3, 4)
    for seq, msg in msgs:
        reading = cbor2.loads(cbor2.loads(msg).value[2])
        assert reading["data"] == sensor_data(3, seq)
        fw = _fw_sign(micropython, d, json.dumps(reading["data"]), str(reading["ts"]))
        assert fw == msg


def test_engine_ack_wait_follows_the_firmware(micropython: str, tmp_path: Path) -> None:
    """The engine's republish timeout is the firmware's (Outbox.ack's smoothed `delay`,
    Loop.ack_wait) over the same ack delays: a gateway that falls behind gets no more copies
    from simulated devices than from real ones."""
    rng = random.Random(11)
    samples = [rng.choice([0, 50, 900, 20_000, 45_000, 400_000, 3_000_000]) + rng.randrange(999)
               for _ in range(60)]
    script = (
        "import sys\nsys.path.insert(0, 'firmware')\nfrom anchor.device import Loop\n"
        "from anchor.outbox_load import load_outbox\n"
        f"l = Loop()\nl.ack_ms = 30000\nl.outbox = ob = load_outbox({str(tmp_path)!r})\n"
        "out = [l.ack_wait()]\n"
        f"for s, r in enumerate({samples!r}):\n"
        "    ob.append(s, b'reading')\n"
        "    g, i, _ = list(ob.waiting())[0]\n"
        "    ob.mark_sent(g, i, 10**9)\n"
        "    ob.ack(s, (), 10**9 + r)\n"
        "    out.append(l.ack_wait())\n"
        "print(out)\n")
    p = run_mp(micropython, "-c", script)
    assert p.returncode == 0, p.stderr
    firmware = json.loads(p.stdout.strip().splitlines()[-1])
    delay, engine = -1.0, [ack_wait(-1.0, 30.0)]
    for r in samples:
        delay = smoothed(delay, r / 1000)
        engine.append(ack_wait(delay, 30.0))
    assert len(firmware) == len(engine) == 61
    assert firmware[0] == 30000 and max(firmware) == 240000  # both bounds reached
    for fw, ours in zip(firmware, engine, strict=True):
        assert abs(fw - ours * 1000) <= 16, (firmware, engine)  # the firmware's ms floor
