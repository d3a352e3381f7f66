"""Storage faults under the running gateway: a full disk, a read-only data directory, a
corrupted database page.

In each case the gateway must stop acknowledging, say exactly what is wrong, never acknowledge
a reading it did not commit, and anchor everything once the fault is removed. The devices are
two CPython devices with an outbox (every unacknowledged reading is published again every 2 s,
as the firmware does), publishing about 40 readings/s; a paho client records every ack.

- Full disk: the data directory lives on a 8 MiB tmpfs, filled up by a file while the gateway
  runs (needs root to mount; skipped otherwise). Freeing the file is the fix; the gateway
  recovers by itself.
- Read-only data directory: the gateway is restarted on a read-only view of its data directory
  (a read-only bind mount as root, else permissions). It refuses to start with a one-line error;
  restarted on the writable directory, it anchors everything the devices kept.
- Corrupted page: the root page of the readings table is overwritten while the gateway is
  stopped. Started again, the gateway keeps running, acknowledges nothing and names the damaged
  file; once the page is repaired (as restoring a backup taken just before would), it anchors
  everything without a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from faults import AckWatcher, GatewayProc, stored, verify
from helpers_readings import Device

from gateway.sim.broker import PrivateBroker
from gateway.storage.store import Store

RATE = 20  # readings per second per device
REPUBLISH_AFTER = 2.0


class Traffic:
    """Devices with an outbox: publish a reading every 1/RATE s, republish what is not acked."""

    def __init__(self, port: int, watcher: AckWatcher, devices: list[Device]) -> None:
        self.watcher, self.devices = watcher, devices
        self.sent: dict[str, dict[int, bytes]] = {d.id: {} for d in devices}
        self.last_pub: dict[tuple[str, int], float] = {}
        self.producing = threading.Event()
        self.producing.set()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"devices-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        self.c.max_inflight_messages_set(0)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _publish(self, dev: str, seq: int, msg: bytes) -> None:
        self.c.publish(f"anchor/{dev}/readings", msg, qos=1)
        self.last_pub[(dev, seq)] = time.monotonic()

    def _run(self) -> None:
        while not self.done.is_set():
            with self.lock:
                if self.producing.is_set():
                    for d in self.devices:
                        msg = d.next({"t": 20.0 + d.seq % 7})
                        self.sent[d.id][d.seq - 1] = msg
                        self._publish(d.id, d.seq - 1, msg)
                now = time.monotonic()
                for dev, msgs in self.sent.items():
                    acked = self.watcher.acked(dev)
                    for seq, msg in msgs.items():
                        if seq not in acked and now - self.last_pub[(dev, seq)] > REPUBLISH_AFTER:
                            self._publish(dev, seq, msg)
            time.sleep(1 / RATE)

    def published(self) -> int:
        with self.lock:
            return sum(len(m) for m in self.sent.values())

    def pending(self) -> int:
        with self.lock:
            return sum(len(set(m) - self.watcher.acked(d)) for d, m in self.sent.items())

    def drain(self, timeout: float) -> None:
        """Stop producing; wait until every reading is acknowledged."""
        self.producing.clear()
        deadline = time.monotonic() + timeout
        while self.pending():
            assert time.monotonic() < deadline, f"{self.pending()} readings never acknowledged"
            time.sleep(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.c.disconnect()
        self.c.loop_stop()


def acked_were_committed(watcher: AckWatcher, data: Path, devices: list[Device]) -> None:
    """Every seq that an ack declared anchored is in the database (read after the ack)."""
    acked = {d.id: watcher.acked(d.id) for d in devices}
    have = stored(data)
    for dev, seqs in acked.items():
        missing = seqs - have.get(dev, set())
        assert not missing, f"{dev}: acknowledged but not committed: {sorted(missing)[:10]}"


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def acks_stall(watcher: AckWatcher, traffic: Traffic, seconds: float) -> None:
    """No ack at all for `seconds` while the devices keep publishing."""
    time.sleep(0.5)  # acks of commits made just before the fault may still be on their way
    before, published = watcher.count, traffic.published()
    time.sleep(seconds)
    assert traffic.published() > published, "the devices stopped publishing"
    assert watcher.count == before, f"{watcher.count - before} acks arrived during the fault"


def end_state(data: Path, vkey: str, traffic: Traffic, watcher: AckWatcher) -> None:
    have = stored(data)
    for d in traffic.devices:
        assert have.get(d.id, set()) == set(traffic.sent[d.id]), d.id
    with Store.open(data, readonly=True) as s:
        assert s.query("SELECT dev, seq FROM readings GROUP BY dev, seq HAVING COUNT(*) > 1") == []
    acked_were_committed(watcher, data, traffic.devices)
    proc = verify(data, vkey)
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Rig:
    def __init__(self, tmp: Path, broker: PrivateBroker, data: Path) -> None:
        self.data = data
        store, self.vkey = Store.create(data)
        self.devices = [Device(f"fs-{k}") for k in range(2)]
        from gateway.fleet import registry

        for d in self.devices:
            registry.add(store, d.id, d.public_bytes)
        store.close()
        self.gw = GatewayProc(data, broker.url, tmp / "gateway.log", "--batch-interval", "0.2")
        self.watcher = AckWatcher(broker.port)
        self.broker = broker
        self.traffic: Traffic | None = None

    def start_traffic(self) -> Traffic:
        self.traffic = Traffic(self.broker.port, self.watcher, self.devices)
        return self.traffic

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
        self.watcher.close()
        self.gw.cleanup()


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="iot-anchor-tmpfs-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(mnt)], check=True, capture_output=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    try:
        with tmpfs("1m") as m:
            return os.path.ismount(m)
    except subprocess.CalledProcessError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not can_mount(), reason="needs root and mount to make a small tmpfs")
def test_full_disk(tmp_path: Path, broker: PrivateBroker) -> None:
    with tmpfs("8m") as mnt:
        rig = Rig(tmp_path, broker, mnt / "data")
        try:
            rig.gw.start()
            traffic = rig.start_traffic()
            wait_for(lambda: rig.watcher.count >= 5, 20, "the first acks")
            # Fill the disk.
            filler = mnt / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(65536))
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(512))
            os.close(fd)
            mark = "commit failed, nothing acknowledged"
            wait_for(lambda: mark in rig.gw.log_since(), 20, "the gateway to report the fault")
            acks_stall(rig.watcher, traffic, 2.0)
            acked_were_committed(rig.watcher, rig.data, rig.devices)
            line = next(x for x in rig.gw.log_since().splitlines() if mark in x)
            assert "database or disk is full" in line and str(rig.data) in line, line
            assert "free space on the disk holding" in line, line
            assert rig.gw.alive()
            # The fix: free the space. The gateway recovers by itself.
            filler.unlink()
            traffic.drain(60)
            assert rig.gw.alive()
            assert rig.gw.stop() == 0
            end_state(rig.data, rig.vkey, traffic, rig.watcher)
            assert "Traceback" not in rig.gw.log_since()
        finally:
            rig.close()


@contextlib.contextmanager
def read_only_view(data: Path, tmp: Path) -> Iterator[Path]:
    """A read-only view of `data`: a read-only bind mount (root), or permissions."""
    if can_mount():
        view = tmp / "ro-view"
        view.mkdir()
        subprocess.run(["mount", "--bind", str(data), str(view)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
            yield view
        finally:
            subprocess.run(["umount", str(view)], capture_output=True)
    else:
        modes = {p: p.stat().st_mode for p in [data, *data.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield data
        finally:
            for p, m in modes.items():
                p.chmod(m)


@pytest.mark.slow
def test_read_only_data_directory(tmp_path: Path, broker: PrivateBroker) -> None:
    rig = Rig(tmp_path, broker, tmp_path / "data")
    try:
        rig.gw.start()
        traffic = rig.start_traffic()
        wait_for(lambda: rig.watcher.count >= 5, 20, "the first acks")
        assert rig.gw.stop() == 0
        with read_only_view(rig.data, tmp_path) as view:
            ro = GatewayProc(view, broker.url, tmp_path / "gateway-ro.log",
                             "--batch-interval", "0.2")
            ro.start(wait_connected=False)
            assert ro.proc is not None
            assert ro.proc.wait(30) == 2
            log = ro.log_since().strip().splitlines()
            # One line that names the database and says what to check; no traceback.
            assert len(log) == 1 and log[0].startswith("error: "), log
            assert str(view / "ledger.db") in log[0], log
            acks_stall(rig.watcher, traffic, 1.0)
            acked_were_committed(rig.watcher, rig.data, rig.devices)
        # The fix: the directory is writable again.
        rig.gw.start()
        traffic.drain(60)
        assert rig.gw.stop() == 0
        end_state(rig.data, rig.vkey, traffic, rig.watcher)
    finally:
        rig.close()


def test_read_only_data_directory_is_named_as_such(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store.create(data)[0].close()
    with read_only_view(data, tmp_path) as view:
        proc = subprocess.run(
            [*__import__("faults").cli("ledger", "status", "--data", str(view))],
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "read-only" in proc.stderr and "init" not in proc.stderr, proc.stderr


def corrupt_readings_root(data: Path) -> tuple[int, bytes]:
    """Overwrite the readings table's root page; returns (offset, original bytes)."""
    assert not (data / "ledger.db-wal").exists() or (data / "ledger.db-wal").stat().st_size == 0
    db = sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'readings'").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    offset = (root - 1) * size
    with open(data / "ledger.db", "r+b") as f:
        f.seek(offset)
        original = f.read(size)
        f.seek(offset)
        f.write(bytes([0xA5]) * size)
    return offset, original


def repair(data: Path, offset: int, original: bytes) -> None:
    with open(data / "ledger.db", "r+b") as f:
        f.seek(offset)
        f.write(original)


@pytest.mark.slow
def test_corrupted_page(tmp_path: Path, broker: PrivateBroker) -> None:
    rig = Rig(tmp_path, broker, tmp_path / "data")
    try:
        rig.gw.start()
        traffic = rig.start_traffic()
        wait_for(lambda: rig.watcher.count >= 5, 20, "the first acks")
        assert rig.gw.stop() == 0  # clean stop: the WAL is folded into ledger.db
        acked_before = {d.id: rig.watcher.acked(d.id) for d in rig.devices}
        offset, original = corrupt_readings_root(rig.data)
        rig.gw.start(wait_connected=False)
        wait_for(lambda: "database disk image is malformed" in rig.gw.log_since(), 30,
                 "the gateway to report the damaged database")
        acks_stall(rig.watcher, traffic, 2.0)
        assert {d.id: rig.watcher.acked(d.id) for d in rig.devices} == acked_before
        log = rig.gw.log_since()
        # It keeps running, and says once a second what is wrong and what to do.
        assert rig.gw.alive() and "Traceback" not in log, log[-3000:]
        assert f"failed on {rig.data / 'ledger.db'}: database disk image is malformed" in log
        assert "restore it from a backup" in log, log[-3000:]
        # The fix: the page is repaired (as restoring a backup taken just before would). The
        # running gateway picks it up by itself.
        repair(rig.data, offset, original)
        traffic.drain(60)
        assert rig.gw.alive()
        assert rig.gw.stop() == 0
        end_state(rig.data, rig.vkey, traffic, rig.watcher)
    finally:
        rig.close()
