"""Shared fixtures: the repository root, the MicroPython binary, a private Mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker import PrivateBroker

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
VECTORS = ROOT.parent / "shared" / "vectors"


def micropython_path() -> str | None:
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON")
    if env:
        return env
    built = ROOT / ".cache" / "micropython" / "micropython"
    if built.exists():
        return str(built)
    return shutil.which("micropython")


@pytest.fixture(scope="session")
def micropython() -> str:
    """Path of the MicroPython Unix port. Missing binary = failure, never a skip."""
    path = micropython_path()
    if not path:
        pytest.fail(
            "the MicroPython Unix port is missing: run 'make setup' (tools/install-micropython)"
        )
    return path


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors not found at {VECTORS} (expected ../shared/vectors)")
    return VECTORS


def run_mp(micropython: str, *args: str, cwd: Path | None = None, timeout: float = 60,
           heapsize: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the MicroPython binary with args; returns the completed process (text)."""
    cmd = [micropython]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += list(args)
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private Mosquitto on a free 127.0.0.1 port, stopped after the test."""
    b = PrivateBroker(workdir=tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.close()
