"""The firmware's own MicroPython unit tests (firmware/tests/test_*.py), one pytest item each.

Each test runs in a fresh MicroPython process: `micropython firmware/tests/FILE NAME`. A missing
binary fails (the `micropython` fixture), it never skips.
"""

from __future__ import annotations

import re

import pytest
from conftest import FIRMWARE, run_mp

FILES = ["test_p256.py", "test_cbor.py", "test_cose.py", "test_state.py"]
CASES = [
    (f, name)
    for f in FILES
    for name in re.findall(r"^def (test_\w+)\(", (FIRMWARE / "tests" / f).read_text(), re.M)
]


def test_cases_found() -> None:
    for f in FILES:
        assert sum(1 for c in CASES if c[0] == f) >= 5, f


@pytest.mark.parametrize(("file", "name"), CASES, ids=[f"{f[5:-3]}::{n}" for f, n in CASES])
def test_firmware(micropython: str, file: str, name: str) -> None:
    r = run_mp(micropython, str(FIRMWARE / "tests" / file), name, timeout=120)
    assert r.returncode == 0 and f"ok {name}" in r.stdout, r.stdout + r.stderr
