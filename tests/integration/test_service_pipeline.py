"""`iot-anchor run` with the real pipeline: topic checks, duplicates acknowledged again, acks
and the retained checkpoint as a device sees them. Messages are signed by the load engine's
signer (byte-identical to the firmware's, see tests/unit/test_loadgen_firmware.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.fleet import registry
from gateway.ledger import note
from gateway.sim.broker import PrivateBroker
from gateway.sim.loadgen import mac_key_for
from gateway.sim.simulate import downlink_public_key, stop_process_group
from gateway.storage.store import Store
from gateway.wire.downlink import decode_ack_payload, open_sealed
from gateway.wire.signer import DeviceSigner


def _opened(data: Path, topic: str, signers: dict[str, DeviceSigner],
            payload: bytes) -> dict[str, int | list[int]]:
    """A sealed ack opened as its device opens it (MAC checked with the device's key)."""
    dev = topic.split("/")[1]
    key = mac_key_for(signers[dev].secret, dev, downlink_public_key(data))
    ctr, upto, seqs, entry = decode_ack_payload(open_sealed(key, topic, payload))
    return {"ctr": ctr, "upto": upto, "seqs": seqs, "entry": entry}

ROOT = Path(__file__).resolve().parents[2]


def start_run(data: Path, broker: PrivateBroker, interval: float, log: Path
              ) -> subprocess.Popen[bytes]:
    """`iot-anchor run` on `data` as a subprocess (its own process group), logging to `log`,
    once it has connected to the broker."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--data", str(data), "--broker", broker.url,
             "--batch-interval", f"{interval:g}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 20
    while "connected to" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process_group(proc, grace=0.5)
            raise AssertionError(log.read_text())
        time.sleep(0.05)
    return proc


@pytest.fixture
def gateway(tmp_path: Path, broker: PrivateBroker) -> Iterator[tuple[Path, str, dict]]:
    data = tmp_path / "data"
    store, vkey = Store.create(data)
    signers = {dev: DeviceSigner.generate(dev) for dev in ("dev-a", "dev-b")}
    for dev, s in signers.items():
        registry.add(store, dev, s.public_key)
    store.close()
    log = tmp_path / "gateway.log"
    proc = start_run(data, broker, 0.2, log)
    try:
        yield data, vkey, signers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
        assert "stopped: " in log.read_text()
    finally:
        stop_process_group(proc, grace=0.5)


def test_topics_duplicates_acks_checkpoint(gateway: tuple[Path, str, dict],
                                           broker: PrivateBroker) -> None:
    data, vkey, signers = gateway
    a = signers["dev-a"]
    m0 = a.sign(0, bytes(32), {"t": 20.5}, 1700000000)
    m1 = a.sign(1, hashlib.sha256(m0).digest(), {"t": 20.75}, 1700000001)

    async def main() -> tuple[list[dict], list[bytes]]:
        acks: list[dict] = []
        checkpoints: list[bytes] = []
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.subscribe("anchor/dev-a/ack", qos=1)
            await c.subscribe("anchor/dev-b/ack", qos=1)
            await c.subscribe("anchor/checkpoint", qos=1)

            async def wait_acks(n: int) -> None:
                async with asyncio.timeout(10):
                    async for m in c.messages:
                        if m.topic.value == "anchor/checkpoint":
                            checkpoints.append(bytes(m.payload))  # type: ignore[arg-type]
                        else:
                            acks.append({"topic": m.topic.value,
                                         **_opened(data, m.topic.value, signers,
                                                   bytes(m.payload))})  # type: ignore[arg-type]
                        if len(acks) >= n:
                            return

            # dev-a's reading on dev-b's topic: rejected, nobody acked
            await c.publish("anchor/dev-b/readings", m0, qos=1)
            # seq 1 before seq 0: anchored, upto stays -1
            await c.publish("anchor/dev-a/readings", m1, qos=1)
            await wait_acks(1)
            await c.publish("anchor/dev-a/readings", m0, qos=1)
            await wait_acks(2)
            # a copy of a stored reading: acknowledged again, not stored twice
            await c.publish("anchor/dev-a/readings", m0, qos=1)
            await wait_acks(3)
        return acks, checkpoints

    acks, checkpoints = asyncio.run(main())
    assert [x["topic"] for x in acks] == ["anchor/dev-a/ack"] * 3
    assert (acks[0]["upto"], acks[0]["seqs"]) == (-1, [1])
    assert (acks[1]["upto"], acks[1]["seqs"]) == (1, [])
    assert (acks[2]["upto"], acks[2]["seqs"]) == (1, [])
    assert acks[2]["entry"] == acks[1]["entry"]  # nothing new was anchored
    assert acks[0]["ctr"] < acks[1]["ctr"] < acks[2]["ctr"]  # sealed, fresh each time
    # the retained checkpoint: a signed note for the ledger as it is now
    assert checkpoints
    cp = note.verify_checkpoint(checkpoints[-1].decode(), vkey)
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway", "ledger", "status", "--json", "--data", str(data)],
        capture_output=True, text=True, cwd=ROOT, timeout=60).stdout)
    assert cp.size == status["entries"]
    assert status["readings"] == 2
    assert status["rejected"] == {"topic_mismatch": 1}
    assert status["devices"]["dev-a"]["last_seq"] == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_commits_open_batch(tmp_path: Path, broker: PrivateBroker,
                                   sig: signal.Signals) -> None:
    """`iot-anchor run` with a 60 s batch interval: the signal closes the open batch, commits
    it, acknowledges it, and the process exits 0."""
    data = tmp_path / "data"
    store, _ = Store.create(data)
    signer = DeviceSigner.generate("dev-s")
    registry.add(store, "dev-s", signer.public_key)
    store.close()
    log = tmp_path / "gateway.log"
    proc = start_run(data, broker, 60, log)
    try:
        msgs, prev = [], bytes(32)
        for seq in range(3):
            m = signer.sign(seq, prev, {"t": seq}, 1700000000 + seq)
            msgs.append(m)
            prev = hashlib.sha256(m).digest()

        async def main() -> list[dict]:
            async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                await c.subscribe("anchor/dev-s/ack", qos=1)
                for m in msgs:
                    await c.publish("anchor/dev-s/readings", m, qos=1)
                await asyncio.sleep(1.0)  # received, waiting in the open batch
                assert "batch:" not in log.read_text()
                proc.send_signal(sig)
                async with asyncio.timeout(20):
                    async for m in c.messages:
                        return [_opened(data, m.topic.value, {"dev-s": signer},
                                        bytes(m.payload))]  # type: ignore[arg-type]
            return []

        acks = asyncio.run(main())
        assert proc.wait(20) == 0, log.read_text()
        assert acks and acks[0]["upto"] == 2
        text = log.read_text()
        assert "stopping: closing the open batch" in text and "batch: 3 readings" in text
        with Store.open(data, readonly=True) as st:
            assert st.reading_count() == 3
    finally:
        stop_process_group(proc, grace=0.5)
