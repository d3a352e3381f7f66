"""The firmware's own MicroPython tests, one pytest item per test function: every
firmware/tests/test_*.py and every `def test_...` in it, found by reading the files.

Each test runs in a fresh MicroPython process on the Unix port: `micropython
firmware/tests/FILE NAME`, which firmware/tests/runner.py answers with "ok NAME". A missing
binary fails (the `micropython` fixture), it never skips.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import FIRMWARE, run_mp

FILES = sorted((FIRMWARE / "tests").glob("test_*.py"))
CASES = [
    (f, name)
    for f in FILES
    for name in re.findall(r"^def (test_\w+)\(", f.read_text(), re.M)
]


def test_every_firmware_test_file_runs_its_tests() -> None:
    """A file found here has tests and hands them to the runner (else none of them would run)."""
    assert FILES
    for f in FILES:
        assert any(c[0] == f for c in CASES), f"{f.name} has no test functions"
        assert "runner.main(globals()" in f.read_text(), f"{f.name} does not call runner.main"


@pytest.mark.parametrize(("file", "name"), CASES, ids=[f"{f.stem[5:]}::{n}" for f, n in CASES])
def test_firmware(micropython: str, file: Path, name: str) -> None:
    r = run_mp(micropython, str(file), name, timeout=120)
    assert r.returncode == 0 and f"ok {name}" in r.stdout, r.stdout + r.stderr
