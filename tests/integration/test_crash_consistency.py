"""Crash consistency: the gateway SIGKILLed 30 times under steady load, devices SIGKILLed,
Mosquitto SIGKILLed and restarted, and still no acknowledged reading is ever lost.

Set-up: 10 MicroPython firmware processes (the real device loop with its flash outbox), a
private Mosquitto with persistence, `iot-anchor run` with 0.2 s batches, and a paho client that
records every ack on anchor/+/ack (what the devices were promised).

The gateway is killed with SIGKILL at 30 moments: half at random times, half the instant its
SQLite WAL file changes (a commit is being written: the kill lands inside the commit or between
the commit and the acks). Each time it is restarted, sometimes after a pause. Along the way three
devices are SIGKILLed and restarted on the same DIR, and the broker is SIGKILLed and restarted
three times while the gateway is down.

Then every device drains its outbox (exits 0 with an empty outbox), and:
- every seq a device published is in the ledger exactly once, and nothing else is (a device
  killed before it first published some readings of its outbox publishes them after its
  restart: at most what it reports waiting in its outbox when it starts again, and below its
  next seq);
- every acknowledged reading is in the ledger (readings lost: 0);
- no security event and no rejection was recorded (crashes make duplicates, nothing else);
- `ledger verify` passes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
from faults import AckWatcher, GatewayProc, status, verify
from faults import stored as stored_seqs

from gateway.sim.broker import PrivateBroker
from gateway.sim.simulate import FleetDevice, MicroPythonFleet
from gateway.storage.store import Store

DEVICES = 10
INTERVAL = 0.3
COUNT = 300  # readings per device: 90 s of production, longer than the kill phase
GATEWAY_KILLS = 30
DEVICE_KILLS_AT = {5: 1, 14: 4, 23: 7}  # after gateway kill k: SIGKILL device i
BROKER_RESTARTS_AT = {9, 18, 27}
SEED = int(os.environ.get("IOT_ANCHOR_CRASH_SEED", "7"))
RUN_OPTIONS = ("--ack-timeout", "2", "--timeout", "120")


def published(log: Path) -> list[int]:
    return [int(m) for m in re.findall(r"^pub seq=(\d+)", log.read_text(), re.M)]


def summaries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def kill_during_commit(gw: GatewayProc, wal: Path, timeout: float) -> bool:
    """SIGKILL the gateway the moment its WAL file is written to. True if a write was seen
    (False: killed at the timeout instead)."""
    def stamp() -> tuple[int, int]:
        try:
            st = os.stat(wal)
            return st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return 0, 0

    before = stamp()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stamp() != before:
            gw.kill()
            return True
        time.sleep(0.0005)
    gw.kill()
    return False


@pytest.mark.slow
def test_crash_consistency(tmp_path: Path, broker: PrivateBroker, micropython: str) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    store, vkey = Store.create(data)
    store.close()
    fleet = MicroPythonFleet(tmp_path / "fleet", DEVICES, prefix="crash")
    assert fleet.prepare(data) == DEVICES
    gw = GatewayProc(data, broker.url, tmp_path / "gateway.log", "--batch-interval", "0.2")
    watcher = AckWatcher(broker.port)
    wal = data / "ledger.db-wal"
    device_kills: dict[str, int] = {}
    mid_commit = 0
    checked_acks = 0
    try:
        gw.start()
        fleet.start(broker.url, INTERVAL, COUNT, RUN_OPTIONS)
        t0 = time.monotonic()
        for k in range(GATEWAY_KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            if k % 2:
                mid_commit += kill_during_commit(gw, wal, timeout=3.0)
            else:
                time.sleep(rng.uniform(0.0, 1.0))
                gw.kill()
            # Right after the kill, before anything restarts: every ack seen so far names a
            # reading that is already on disk.
            acked = {d.dev: watcher.acked(d.dev) for d in fleet.devices}
            on_disk = stored_seqs(data)
            for dev, seqs in acked.items():
                early = seqs - on_disk.get(dev, set())
                assert not early, f"kill {k}: {dev} acked but not on disk: {sorted(early)[:10]}"
                checked_acks += len(seqs)
            if k in DEVICE_KILLS_AT:
                victim: FleetDevice = fleet.devices[DEVICE_KILLS_AT[k]]
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)  # one process, no children
                victim.proc.wait()
                device_kills[victim.dev] = device_kills.get(victim.dev, 0) + 1
                left = COUNT - len(published(victim.log))
                fleet.start_one(victim, broker.url, INTERVAL, max(1, left), RUN_OPTIONS)
            if k in BROKER_RESTARTS_AT:
                broker.kill()  # SIGKILL: whatever it had not saved is gone
                time.sleep(rng.uniform(0.2, 1.0))
                broker.start()
            time.sleep(rng.choice([0.0, 0.0, 0.5, 2.0]))  # sometimes down for a while
            gw.start()
        kill_phase = time.monotonic() - t0
        # The last gateway stays up; every device finishes its count and drains its outbox.
        fleet.wait(time.monotonic() + COUNT * INTERVAL + 150)
        st = status(data)
        assert gw.stop() == 0, gw.log_since()[-3000:]
    finally:
        fleet.stop()
        watcher.close()
        gw.cleanup()

    # Devices: all exited 0 with an empty outbox and nothing dropped.
    for d in fleet.devices:
        assert d.proc is not None and d.proc.returncode == 0, d.log.read_text()[-2000:]
        last = summaries(d.log)[-1]
        assert last["ok"] is True and last["outbox"] == 0 and last["dropped"] == 0, last

    with Store.open(data, readonly=True) as s:
        rows = s.query("SELECT dev, seq FROM readings")
        twice = s.query("SELECT dev, seq, COUNT(*) FROM readings GROUP BY dev, seq "
                        "HAVING COUNT(*) > 1")
    assert twice == []
    stored: dict[str, set[int]] = {}
    for dev, seq in rows:
        stored.setdefault(dev, set()).add(seq)

    lost_acked = 0
    unlogged = 0
    for d in fleet.devices:
        pub = set(published(d.log))
        have = stored.get(d.dev, set())
        next_seq = summaries(d.log)[-1]["seq"]
        assert pub <= have, f"{d.dev}: published but not anchored: {sorted(pub - have)[:20]}"
        assert max(have) < next_seq
        # Readings anchored without a "pub" line: queued in the outbox before a kill and first
        # published by the restarted process (logged as "repub"). They are bounded by what the
        # restarted device found waiting in its outbox ("start ... outbox=K").
        extra = have - pub
        waiting = sum(int(k) for k in re.findall(r"^start dev=\S+ seq=\d+ outbox=(\d+)",
                                                   d.log.read_text(), re.M)[1:])
        assert len(extra) <= waiting, (d.dev, sorted(extra), waiting)
        unlogged += len(extra)
        if d.dev not in device_kills:
            assert have == set(range(COUNT)), d.dev
            assert st["devices"][d.dev]["gaps"] == []
        acked = watcher.acked(d.dev)
        lost_acked += len(acked - have)
        assert acked <= have, f"{d.dev}: acknowledged but missing: {sorted(acked - have)[:20]}"

    assert st["events"] == {}, st["events"]
    assert st["rejected"] == {}, st["rejected"]
    proc = verify(data, vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = gw.log_since()
    assert "Traceback" not in log, log[log.find("Traceback") - 2000:][:6000]

    figures = {
        "gateway_kills_survived": GATEWAY_KILLS, "kills_during_a_wal_write": mid_commit,
        "device_kills": sum(device_kills.values()), "broker_restarts": len(BROKER_RESTARTS_AT),
        "kill_phase_s": round(kill_phase, 1), "readings_anchored": len(rows),
        "acks_seen": watcher.count,
        "acked_seqs_checked_on_disk_after_kills": checked_acks,
        "acked_readings": sum(len(watcher.acked(d.dev)) for d in fleet.devices),
        "unlogged_readings_recovered": unlogged, "readings_lost": lost_acked,
    }
    print(f"\ncrash consistency: {GATEWAY_KILLS} gateway SIGKILLs survived ({mid_commit} during "
          f"a WAL write), {sum(device_kills.values())} device kills, "
          f"{len(BROKER_RESTARTS_AT)} broker kills; {len(rows)} readings anchored, "
          f"readings lost: {lost_acked}")
    print(json.dumps(figures))
    assert lost_acked == 0
