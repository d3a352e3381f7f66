"""End to end: real Mosquitto, real MicroPython firmware processes, the real gateway service.

Every test checks the same end state (`_check_end_state`):
* each device exited 0 with an empty outbox, having produced what it was asked to;
* the ledger holds exactly the seqs the devices published (from their own logs), each once;
* each device's prev chain is complete (prev = SHA-256 of the nearest lower stored reading,
  zeros for seq 0) and no security event (equivocation, chain break) was recorded;
* `iot-anchor ledger verify` passes, and a receipt per device verifies offline with the
  gateway's vkey and the device's key.
Faults: the gateway SIGKILLed and down for several seconds; a device SIGKILLed and restarted on
the same DIR; the broker SIGKILLed and restarted on the same port.
Short intervals and ack timeouts keep the file at about a minute on 2 cores. Everything a test
starts is stopped in `finally` blocks (process groups).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sim.broker import PrivateBroker
from gateway.sim.simulate import FleetDevice, MicroPythonFleet, stop_process_group
from gateway.storage.store import Store
from gateway.wire.cose import decode

ROOT = Path(__file__).resolve().parents[2]
ACK_TIMEOUT = "1.5"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


class Gateway:
    """`iot-anchor run` as a child process in its own process group."""

    def __init__(self, data: Path, broker: PrivateBroker, log: Path) -> None:
        self.data, self.broker, self.log = data, broker, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cli("run", "--data", str(self.data), "--broker", self.broker.url,
                    "--batch-interval", "0.2"),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True)
        deadline = time.monotonic() + 20
        while "connected to" not in self.log.read_text(errors="replace").split("gateway ")[-1]:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "gateway did not connect"
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM: the service commits its open batch, acks, and exits 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            stop_process_group(self.proc, grace=0.1)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def cleanup(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=0.5)


class Setup:
    def __init__(self, tmp: Path, broker: PrivateBroker, devices: int) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        store, self.vkey = Store.create(self.data)
        store.close()
        self.broker = broker
        self.gateway = Gateway(self.data, broker, tmp / "gateway.log")
        self.fleet = MicroPythonFleet(tmp / "fleet", devices, prefix="e2e")
        assert self.fleet.prepare(self.data) == devices

    def run_options(self, drain: float = 60) -> tuple[str, ...]:
        return ("--ack-timeout", ACK_TIMEOUT, "--timeout", f"{drain:g}")

    def start_devices(self, interval: float, count: int) -> None:
        self.fleet.start(self.broker.url, interval, count, self.run_options())

    def wait_devices(self, timeout: float) -> None:
        self.fleet.wait(time.monotonic() + timeout)

    def cleanup(self) -> None:
        self.fleet.stop()
        self.gateway.cleanup()


@pytest.fixture
def setup_factory(tmp_path: Path, broker: PrivateBroker, micropython: str) -> Iterator[type]:
    # `micropython`: a missing binary fails here with the set-up command, never skips
    made: list[Setup] = []

    def make(devices: int) -> Setup:
        s = Setup(tmp_path, broker, devices)
        made.append(s)
        return s

    try:
        yield make  # type: ignore[misc]
    finally:
        for s in made:
            s.cleanup()


def published_seqs(log: Path) -> list[int]:
    """Every seq the device published for the first time, from its log ("pub seq=N ...")."""
    return [int(m) for m in re.findall(r"^pub seq=(\d+)", log.read_text(), re.M)]


def summaries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _check_end_state(s: Setup, expected: dict[str, set[int]]) -> None:
    # devices: exited 0, outbox empty
    for d in s.fleet.devices:
        assert d.proc is not None and d.proc.returncode == 0, d.log.read_text()[-2000:]
        last = summaries(d.log)[-1]
        assert last["ok"] is True and last["outbox"] == 0 and last["dropped"] == 0, last
    store = Store.open(s.data, readonly=True)
    try:
        rows = store.query("SELECT dev, seq, cose FROM readings ORDER BY dev, seq")
        events = store.query("SELECT kind, dev, seq, detail FROM events")
        rejected = store.rejected_counts()
    finally:
        store.close()
    by_dev: dict[str, dict[int, bytes]] = {}
    for dev, seq, cose in rows:
        assert seq not in by_dev.get(dev, {}), f"{dev} seq {seq} stored twice"
        by_dev.setdefault(dev, {})[seq] = bytes(cose)
    # exactly once: the stored seqs are the published ones
    assert {dev: set(m) for dev, m in by_dev.items()} == expected
    assert len(rows) == sum(len(v) for v in expected.values())
    assert events == [], events
    assert rejected == {}, rejected
    # prev chains: each reading's prev is the hash of the nearest lower stored reading
    for dev, msgs in by_dev.items():
        prev = bytes(32)
        for seq in sorted(msgs):
            d = decode(msgs[seq])
            assert (d.dev, d.seq) == (dev, seq)
            assert d.prev == prev, f"{dev} seq {seq}: chain broken"
            prev = hashlib.sha256(msgs[seq]).digest()
    # the audit
    env = dict(os.environ, IOT_ANCHOR_DATA=str(s.data))
    v = subprocess.run(cli("ledger", "verify"), capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    # a receipt per device, verified offline (no --data) with both keys
    for d in s.fleet.devices:
        seq = max(by_dev[d.dev])
        r = subprocess.run(cli("receipt", d.dev, str(seq)), capture_output=True, text=True,
                           env=env, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        path = s.tmp / f"receipt-{d.dev}.json"
        path.write_text(r.stdout)
        key = d.dir.with_suffix(".pub").read_text().strip()
        vr = subprocess.run(
            cli("verify-receipt", str(path), "--gateway-key", s.vkey, "--device-key", key),
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={k: v for k, v in os.environ.items() if k != "IOT_ANCHOR_DATA"})
        assert vr.returncode == 0, vr.stdout + vr.stderr


def _expected(devices: list[FleetDevice]) -> dict[str, set[int]]:
    return {d.dev: set(published_seqs(d.log)) for d in devices}


def test_baseline_5_devices_x_20(setup_factory) -> None:  # type: ignore[no-untyped-def]
    s = setup_factory(5)
    s.gateway.start()
    s.start_devices(interval=0.05, count=20)
    s.wait_devices(60)
    assert s.gateway.stop() == 0
    expected = _expected(s.fleet.devices)
    assert all(seqs == set(range(20)) for seqs in expected.values()), expected
    _check_end_state(s, expected)


def test_gateway_down_while_devices_publish(setup_factory) -> None:  # type: ignore[no-untyped-def]
    s = setup_factory(3)
    s.gateway.start()
    s.start_devices(interval=0.2, count=40)  # 8 s of production
    time.sleep(2.0)
    s.gateway.kill()  # SIGKILL: whatever it had not committed is neither acked nor PUBACKed
    down_from = time.monotonic()
    time.sleep(3.0)
    during = {d.dev: len(published_seqs(d.log)) for d in s.fleet.devices}
    s.gateway.start()
    s.wait_devices(60)
    assert s.gateway.stop() == 0
    assert time.monotonic() - down_from > 3.0
    expected = _expected(s.fleet.devices)
    assert all(seqs == set(range(40)) for seqs in expected.values()), expected
    # the devices kept publishing while the gateway was down
    assert all(n >= 15 for n in during.values()), during
    _check_end_state(s, expected)


def test_device_killed_and_restarted(setup_factory) -> None:  # type: ignore[no-untyped-def]
    s = setup_factory(3)
    s.gateway.start()
    s.start_devices(interval=0.2, count=25)
    victim = s.fleet.devices[1]
    time.sleep(1.5)
    s.gateway.kill()  # no acks for a while: the victim's outbox fills up
    time.sleep(1.0)
    assert victim.proc is not None
    victim.proc.kill()  # SIGKILL
    victim.proc.wait()
    first_run = published_seqs(victim.log)
    assert first_run, victim.log.read_text()
    s.gateway.start()
    # restart on the same DIR: 10 more readings
    s.fleet.start_one(victim, s.broker.url, 0.2, 10, s.run_options())
    s.wait_devices(60)
    assert s.gateway.stop() == 0
    all_pub = published_seqs(victim.log)
    second_run = all_pub[len(first_run):]
    assert len(second_run) == 10
    assert min(second_run) > max(first_run), "a seq was reused after the restart"
    starts = re.findall(r"^start dev=\S+ seq=(\d+) outbox=(\d+)", victim.log.read_text(), re.M)
    assert len(starts) == 2 and int(starts[1][1]) > 0, f"nothing to replay: {starts}"
    expected = _expected(s.fleet.devices)
    # SIGKILL can land after a reading went into the outbox and before its "pub" line was
    # written: such a reading is replayed after the restart and anchored, so it is expected
    # too. It can only be one of the seqs between the last logged one and the restart's
    # first, and there cannot be more of them than the restart found in the outbox.
    restart_seq, outbox_at_restart = int(starts[1][0]), int(starts[1][1])
    store = Store.open(s.data, readonly=True)
    try:
        stored = {seq for (seq,) in store.query(
            "SELECT seq FROM readings WHERE dev = ?", (victim.dev,))}
    finally:
        store.close()
    unlogged = stored & set(range(max(first_run) + 1, restart_seq))
    assert len(unlogged) <= outbox_at_restart, (unlogged, starts)
    expected[victim.dev] = set(all_pub) | unlogged
    _check_end_state(s, expected)


def test_broker_restarted(setup_factory) -> None:  # type: ignore[no-untyped-def]
    s = setup_factory(3)
    s.gateway.start()
    s.start_devices(interval=0.2, count=40)
    time.sleep(2.0)
    s.broker.kill()
    time.sleep(2.0)
    s.broker.start()
    s.wait_devices(60)
    assert s.gateway.proc is not None and s.gateway.proc.poll() is None
    assert s.gateway.stop() == 0
    assert "reconnected to" in s.gateway.log.read_text()
    for d in s.fleet.devices:
        assert summaries(d.log)[-1]["connects"] >= 2
    expected = _expected(s.fleet.devices)
    assert all(seqs == set(range(40)) for seqs in expected.values()), expected
    _check_end_state(s, expected)
