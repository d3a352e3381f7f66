"""Drive firmware/tests/test_device.py (device loop pieces, Unix board layer, board selection)
under the MicroPython binary. The loop against Mosquitto: tests/integration/
test_mqtt_client_device.py."""

from __future__ import annotations

import re

import pytest
from conftest import FIRMWARE, run_mp

SCRIPT = FIRMWARE / "tests" / "test_device.py"
NAMES = re.findall(r"^def (test_\w+)\(", SCRIPT.read_text(), re.M)


def test_names_found() -> None:
    assert len(NAMES) >= 8, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_device_firmware(micropython: str, name: str) -> None:
    r = run_mp(micropython, str(SCRIPT), name, timeout=60)
    assert r.returncode == 0 and f"ok {name}" in r.stdout, r.stdout + r.stderr
