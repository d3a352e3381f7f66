"""The CLI stays quiet when its reader closes the pipe early (`iot-anchor ... | head -1`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Runs `iot-anchor device list --json` with print() made to write 512 KiB, far more than a pipe
# holds, so the write fails with EPIPE once `head -c 1` has closed its end.
BIG_OUTPUT = """
import builtins, sys
from gateway import cli
orig = builtins.print
builtins.print = lambda *a, **k: [orig("x" * 65536, **k) for _ in range(8)]
raise SystemExit(cli.main(["device", "list", "--json", "--data", sys.argv[1]]))
"""


def test_closed_pipe_gives_no_traceback(tmp_path: Path) -> None:
    data = tmp_path / "d"
    subprocess.run([sys.executable, "-m", "gateway", "init", "--data", str(data)],
                   check=True, capture_output=True)
    script = tmp_path / "big.py"
    script.write_text(BIG_OUTPUT)
    r = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" "{script}" "{data}" | head -c 1 >/dev/null'],
        capture_output=True, text=True, timeout=60,
    )
    assert "Traceback" not in r.stderr, r.stderr
    assert "BrokenPipeError" not in r.stderr, r.stderr
