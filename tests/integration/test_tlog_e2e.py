"""The log with its real parts: `run --http` with two witnesses, a mirror following, real
MicroPython devices through Mosquitto. Every reading reaches the mirror, the mirror's ledger
verifies, and a receipt from the mirror verifies with both witness keys and a quorum of 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.sim.broker import PrivateBroker, free_port
from gateway.sim.simulate import MicroPythonFleet, stop_process_group
from gateway.storage.store import Store
from tests.integration.test_witness import _start

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_gateway_witnesses_mirror_and_micropython_devices(
        tmp_path: Path, broker: PrivateBroker, micropython: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    data, mdir = tmp_path / "gw", tmp_path / "mirror"
    store, vkey = Store.create(data)
    store.close()
    fleet = MicroPythonFleet(tmp_path / "fleet", 3, prefix="tl")
    assert fleet.prepare(data) == 3
    witnesses, wkeys, wurls = [], [], []
    for k in range(2):
        key = tmp_path / f"w{k}.key"
        assert main(["witness", "init", "--key", str(key), "--name", f"witness.e2e/w{k}"]) == 0
        wkeys.append(capsys.readouterr().out.strip().splitlines()[-1])
        p, url = _start(key, tmp_path / f"wd{k}", vkey)
        witnesses.append(p)
        wurls.append(url)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    glog = open(tmp_path / "gateway.log", "wb")
    mlog = open(tmp_path / "mirror.log", "wb")
    gw = mirror = None
    try:
        gw = subprocess.Popen(
            _cli("run", "--data", str(data), "--broker", broker.url, "--batch-interval", "0.2",
                 "--http", f"127.0.0.1:{port}",
                 *[a for u, v in zip(wurls, wkeys, strict=True)
                   for a in ("--witness", f"{u}={v}")]),
            stdout=glog, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        _wait(lambda: "serving the log on" in (tmp_path / "gateway.log").read_text(), 30,
              "the gateway did not serve HTTP")
        mirror = subprocess.Popen(
            _cli("mirror", f"http://127.0.0.1:{port}", "--data", str(mdir), "--gateway-key",
                 vkey, "--follow", "--interval", "0.3", "--workers", "1"),
            stdout=mlog, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        fleet.start(broker.url, 0.05, 25, ("--ack-timeout", "1.5", "--timeout", "60"))
        fleet.wait(time.monotonic() + 90)
        for d in fleet.devices:
            assert d.proc is not None and d.proc.returncode == 0, d.log.read_text()[-2000:]

        def caught_up() -> bool:
            with Store.open(data, readonly=True) as g:
                cp = g.latest_checkpoint()
                if cp is None or len(g.cosignature_lines(cp[0])) < 2 or g.reading_count() < 75:
                    return False
                size = cp[0]
            if not (mdir / "ledger.db").exists():
                return False
            try:
                with Store.open(mdir, readonly=True) as m:
                    return m.entry_count() == size and len(m.cosignature_lines(size)) == 2
            except ConfigError:  # the mirror is creating it (no schema yet)
                return False

        _wait(caught_up, 60, "the mirror did not catch up with a cosigned checkpoint:\n"
              + (tmp_path / "mirror.log").read_text()[-2000:])
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
        mirror.send_signal(signal.SIGTERM)
        assert mirror.wait(30) == 0
    finally:
        fleet.stop()
        for proc in (gw, mirror):
            if proc is not None:
                stop_process_group(proc, grace=0.5)
        for p in witnesses:
            p.terminate()
            p.wait(10)
        glog.close()
        mlog.close()
    # every reading reached the mirror
    with Store.open(data, readonly=True) as g, Store.open(mdir, readonly=True) as m:
        want = g.query("SELECT dev, seq, cose FROM readings ORDER BY dev, seq")
        assert len(want) == 75
        assert m.query("SELECT dev, seq, cose FROM readings ORDER BY dev, seq") == want
    assert main(["ledger", "verify", "--data", str(mdir)]) == 0
    assert "ledger OK" in capsys.readouterr().out
    # a receipt from the mirror, with both witnesses' cosignatures, a quorum of 2
    dev = fleet.devices[0]
    assert main(["receipt", dev.dev, "24", "--data", str(mdir)]) == 0
    (tmp_path / "r.json").write_text(capsys.readouterr().out)
    key = dev.dir.with_suffix(".pub").read_text().strip()
    assert main(["verify-receipt", str(tmp_path / "r.json"), "--gateway-key", vkey,
                 "--device-key", key, "--witness-key", *wkeys, "--witness-quorum", "2"]) == 0
    out = capsys.readouterr().out
    assert "device signature checked" in out and "cosigned by 2 of 2" in out
    assert main(["ledger", "status", "--data", str(data)]) == 0
    assert "witnesses: 2, quorum 2" in capsys.readouterr().out
