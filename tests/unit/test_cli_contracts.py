"""Command-line contracts checked from outside, as an external checker would: the exact
command, its exit status, and one line that says what was wrong and what to do next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "gateway"]
VKEY = "iot-anchor/0123456789abcdef+01234567+AR1rJd6/4nPolbCh6nZEtf+OIlMOStzRja+gZy8invy7"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_verify_receipt_unreadable_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00receipt")
    for name, what in [("missing.json", "cannot read missing.json: No such file or directory"),
                       ("adir", "cannot read adir: Is a directory"),
                       ("binary.json", "binary.json is not text")]:
        p = cli("verify-receipt", name, "--gateway-key", VKEY, cwd=tmp_path)
        assert p.returncode == 1, p
        lines = p.stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"FAIL: {what}"), p.stdout
        assert "Errno" not in lines[0]
        # ... and what to do next
        assert "check the path" in lines[0] or "pass the JSON file" in lines[0], lines[0]
