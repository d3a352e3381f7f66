"""Outside-checker contracts of the commands that need a broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.sim.broker import PrivateBroker
from gateway.sim.simulate import stop_process_group

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway"]


def test_simulate_without_gateway_says_what_to_do(tmp_path: Path, micropython: str,
                                                  broker: PrivateBroker) -> None:
    data = str(tmp_path / "data")
    p = subprocess.run([*CLI, "init", "--data", data], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    proc = subprocess.Popen([*CLI, "simulate", "--data", data, "--broker", broker.url,
                             "--devices", "1", "--interval", "0.2", "--duration", "0.4",
                             "--drain-timeout", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop_process_group(proc, grace=5)
    assert proc.returncode == 1, out + err
    assert out.strip().splitlines()[-1].startswith('{"ok": false')  # the JSON stays last
    assert "NOT all acknowledged" in out
    # ... and what to do next
    assert "check that the gateway runs ('iot-anchor run'" in err, err
    assert "--with-gateway" in err and "--drain-timeout" in err
