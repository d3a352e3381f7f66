"""`iot-anchor simulate` (both engines) and `iot-anchor demo`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sim.broker import PrivateBroker
from gateway.sim.simulate import stop_process_group
from gateway.storage.store import Store

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@pytest.fixture
def data(tmp_path: Path, micropython: str) -> Path:
    # `micropython`: a missing binary fails here with the set-up command, never skips
    d = tmp_path / "data"
    p = subprocess.run(cli("init", "--data", str(d)), capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return d


@pytest.fixture
def gateway(data: Path, broker: PrivateBroker, tmp_path: Path) -> Iterator[subprocess.Popen]:
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cli("run", "--data", str(data), "--broker", broker.url,
                                    "--batch-interval", "0.2"),
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while "connected to" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        stop_process_group(proc, grace=0.5)


def _simulate(data: Path, broker: PrivateBroker, *args: str,
              timeout: float = 120) -> tuple[int, dict, str]:
    """Run simulate in its own process group (its devices included), stopped if it hangs."""
    proc = subprocess.Popen(cli("simulate", "--data", str(data), "--broker", broker.url, *args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process_group(proc, grace=5)
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return proc.returncode, summary, out + err


def _status(data: Path) -> dict:
    p = subprocess.run(cli("ledger", "status", "--json", "--data", str(data)),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_simulate_micropython_twice(data: Path, broker: PrivateBroker, gateway) -> None:  # type: ignore[no-untyped-def]
    code, summary, out = _simulate(data, broker, "--devices", "3", "--interval", "0.2",
                                   "--duration", "2", "--ack-timeout", "2")
    assert code == 0, out
    assert summary["ok"] and summary["produced"] == summary["acknowledged"] == 30, out
    for dev in ("sim-0000", "sim-0001", "sim-0002"):
        assert f"{dev}        10            10" in out
    # a second run reuses the fleet (no new registration) and continues the seqs
    code, summary, out = _simulate(data, broker, "--devices", "3", "--interval", "0.2",
                                   "--duration", "1", "--ack-timeout", "2")
    assert code == 0, out
    assert "(0 newly registered)" in out
    status = _status(data)
    assert status["readings"] == 45
    for dev in ("sim-0000", "sim-0001", "sim-0002"):
        assert status["devices"][dev]["last_seq"] == 14
        assert status["devices"][dev]["gaps"] == []


def test_simulate_cpython_engine(data: Path, broker: PrivateBroker, gateway) -> None:  # type: ignore[no-untyped-def]
    code, summary, out = _simulate(data, broker, "--engine", "cpython", "--devices", "40",
                                   "--interval", "0", "--count", "25", "--procs", "2")
    assert code == 0, out
    assert summary["produced"] == summary["acknowledged"] == 1000, out
    assert summary["publish_per_s"] > 0 and summary["latency_p99_ms"] is not None
    status = _status(data)
    assert status["readings"] == 1000
    assert all(d["last_seq"] == 24 and d["gaps"] == [] for d in status["devices"].values())
    v = subprocess.run(cli("ledger", "verify", "--data", str(data)), capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr


def test_simulate_without_gateway_fails(data: Path, broker: PrivateBroker) -> None:
    """No gateway: nothing is acknowledged; simulate says so and exits 1."""
    code, summary, out = _simulate(data, broker, "--devices", "2", "--interval", "0.2",
                                   "--duration", "0.6", "--drain-timeout", "2")
    assert code == 1, out
    assert summary["ok"] is False and summary["acknowledged"] == 0 and summary["produced"] == 6
    assert "NOT all acknowledged" in out


def test_simulate_explains_bad_options(data: Path, broker: PrivateBroker) -> None:
    code, _, out = _simulate(data, broker, "--engine", "cpython", "--devices", "2",
                             "--interval", "0")
    assert code == 2 and "error: --interval 0 (as fast as possible) needs --count" in out
    code, _, out = _simulate(data, broker, "--devices", "0")
    assert code == 2 and "--devices 0 is below 1" in out
    code, _, out = _simulate(data, broker, "--devices", "1", "--interval", "0")
    assert code == 2 and "error: --interval 0 (as fast as possible) needs --count" in out


def test_demo_passes_in_under_60_s() -> None:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "IOT_ANCHOR_DATA"})
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for needle in ("readings published: 54", "readings anchored:  54", "ledger entries:",
                   "latest checkpoint:", "ledger verify:      exit 0", "verified offline",
                   "rule 'warm' fired", "-> alert, sent", "demo passed"):
        assert needle in out, out
    assert took < 60, f"demo took {took:.1f} s"


def test_store_untouched_by_failed_simulate(data: Path, broker: PrivateBroker) -> None:
    """A simulate that fails (no gateway) registered its devices and anchored nothing."""
    _simulate(data, broker, "--devices", "1", "--interval", "0.2", "--duration", "0.2",
              "--drain-timeout", "1")
    with Store.open(data, readonly=True) as store:
        assert store.reading_count() == 0
        assert [d.id for d in store.devices()] == ["sim-0000"]


def test_simulate_with_gateway(data: Path, broker: PrivateBroker, tmp_path: Path) -> None:
    code, summary, out = _simulate(data, broker, "--devices", "2", "--interval", "0.2",
                                   "--duration", "1", "--ack-timeout", "2", "--with-gateway")
    assert code == 0, out
    assert summary["produced"] == summary["acknowledged"] == 10
    assert _status(data)["readings"] == 10
    log = (data / "fleet" / "gateway.log").read_text()
    assert "stopped: 10 messages received, 10 readings anchored" in log
    # no data dir: the gateway cannot start, and simulate says why
    p = subprocess.run(cli("simulate", "--data", str(tmp_path / "none"), "--broker", broker.url,
                           "--devices", "1", "--with-gateway", "--fleet-dir",
                           str(tmp_path / "fleet2")),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "the gateway did not connect" in p.stderr, p.stderr
