"""Helpers for the fault tests (hostile traffic, crashes, storage faults).

- `GatewayProc`: `iot-anchor run` as a child process in its own process group, with its log in
  a file, its resident memory (`rss`), SIGKILL, SIGTERM and restart.
- `AckWatcher`: a paho client subscribed to `anchor/+/ack` that records every ack it sees
  (the device-side view of what the gateway promised).
- `status`, `verify`: `iot-anchor ledger status --json` and `ledger verify`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def iot(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def status(data: Path) -> dict[str, Any]:
    proc = iot("ledger", "status", "--json", "--data", str(data))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def verify(data: Path, vkey: str) -> subprocess.CompletedProcess[str]:
    return iot("ledger", "verify", "--data", str(data), "--gateway-key", vkey)


def stored(data: Path) -> dict[str, set[int]]:
    """Per device, the seqs stored in the data directory's database (read-only)."""
    db = sqlite3.connect(f"file:{data / 'ledger.db'}?mode=ro", uri=True, timeout=30)
    try:
        out: dict[str, set[int]] = {}
        for dev, seq in db.execute("SELECT dev, seq FROM readings"):
            out.setdefault(dev, set()).add(seq)
        return out
    finally:
        db.close()


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT the process group that `proc` leads, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class GatewayProc:
    """`iot-anchor run` in its own process group; everything it prints goes to `log`."""

    def __init__(self, data: Path, broker_url: str | None, log: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        """`broker_url` None: the gateway takes $IOT_ANCHOR_BROKER from `env` (so that a
        password in the URL does not show on its command line)."""
        self.data, self.broker_url, self.log, self.extra = data, broker_url, log, extra
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait_connected: bool = True, timeout: float = 30) -> None:
        mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cli("run", "--data", str(self.data),
                    *(("--broker", self.broker_url) if self.broker_url else ()), *self.extra),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True, env=self.env)
        self.starts += 1
        if not wait_connected:
            return
        deadline = time.monotonic() + timeout
        # "subscribed to": the broker holds the gateway's subscription (a reading published
        # between "connected to" and the SUBACK of a first session reaches no one)
        while "subscribed to" not in self.log_since(mark):
            assert self.proc.poll() is None, self.log_since(mark)
            assert time.monotonic() < deadline, "gateway did not connect:\n" + self.log_since(mark)
            time.sleep(0.05)

    def log_since(self, offset: int = 0) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size of the gateway process, bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM: the service commits its open batch, acks, and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            stop_group(self.proc, grace=0.1)

    def cleanup(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace=0.5)


class AckWatcher:
    """Records every ack on anchor/+/ack: per device, the union of acknowledged seqs."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Condition()
        self.upto: dict[str, int] = {}
        self.seqs: dict[str, set[int]] = {}
        self.count = 0
        self.bad: list[bytes] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"ackwatch-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("anchor/+/ack", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        dev = m.topic.split("/")[1]
        try:
            # an observer without the devices' MAC keys: the sealed ack's payload, unchecked
            # (each device checks its acks itself)
            ack = cbor2.loads(cbor2.loads(m.payload).value[2])
            upto, seqs = int(ack["upto"]), [int(s) for s in ack["seqs"]]
        except Exception:
            with self.lock:
                self.bad.append(m.payload)
            return
        with self.lock:
            self.count += 1
            self.upto[dev] = max(self.upto.get(dev, -1), upto)
            self.seqs.setdefault(dev, set()).update(seqs)
            self.lock.notify_all()

    def acked(self, dev: str) -> set[int]:
        """Every seq of `dev` that some ack declared anchored."""
        with self.lock:
            return set(range(self.upto.get(dev, -1) + 1)) | self.seqs.get(dev, set())

    def wait_upto(self, want: dict[str, int], timeout: float) -> bool:
        """Wait until every device's upto reaches the given seq."""
        def done() -> bool:
            return all(self.upto.get(d, -1) >= s for d, s in want.items())

        with self.lock:
            return self.lock.wait_for(done, timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
