"""Drive firmware/tests/test_outbox.py (the flash outbox) under the MicroPython binary."""

from __future__ import annotations

import re

import pytest
from conftest import FIRMWARE, run_mp

SCRIPT = FIRMWARE / "tests" / "test_outbox.py"
NAMES = re.findall(r"^def (test_\w+)\(", SCRIPT.read_text(), re.M)


def test_names_found() -> None:
    assert len(NAMES) >= 10, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_outbox_firmware(micropython: str, name: str) -> None:
    r = run_mp(micropython, str(SCRIPT), name, timeout=60)
    assert r.returncode == 0 and f"ok {name}" in r.stdout, r.stdout + r.stderr
