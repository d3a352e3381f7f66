"""Shared fixtures: the repository root, the MicroPython binary, a private Mosquitto, a private
PostgreSQL cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sim.broker import PrivateBroker
from gateway.sim.postgres import PrivatePostgres
from gateway.storage.store import Store

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


def micropython32_path() -> Path:
    env = os.environ.get("IOT_ANCHOR_MICROPYTHON32")
    return Path(env) if env else ROOT / ".cache" / "micropython" / "micropython32"


@pytest.fixture(scope="session")
def micropython32() -> str:
    """Path of a 32-bit build of the MicroPython Unix port (a board's object sizes; the heap-limit
    test runs on it). Missing or not 32-bit = failure, never a skip."""
    path = micropython32_path()
    if not path.is_file():
        pytest.fail(
            f"the 32-bit MicroPython Unix port is missing ({path}): run 'make setup' or "
            "'tools/install-micropython --32bit' (x86_64 with gcc-multilib), or set "
            "IOT_ANCHOR_MICROPYTHON32 to a 32-bit micropython binary"
        )
    p = subprocess.run([str(path), "-c", "import sys; print(sys.maxsize)"], capture_output=True,
                       text=True, timeout=30)
    if p.returncode != 0 or int(p.stdout.strip() or 0) >= 2**32:
        pytest.fail(
            f"{path} is not a working 32-bit MicroPython (sys.maxsize: {p.stdout.strip()!r}, "
            f"{p.stderr.strip()[-200:]!r}): rebuild it with 'tools/install-micropython --32bit' "
            "after removing it, or point IOT_ANCHOR_MICROPYTHON32 at a 32-bit build"
        )
    return str(path)


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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh data directory's store (`iot-anchor init` in process), closed after the test."""
    s, _ = Store.create(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs the MicroPython binary `micropython` and every one that starts
    Mosquitto `mosquitto`, and every one that starts PostgreSQL `postgres` (it uses one of the
    fixtures above, directly or through another fixture): `-m "not micropython and not
    mosquitto and not postgres"` leaves them out. Tests that start these
    without the fixtures live in tests/integration/."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if {"micropython", "micropython32"} & used:
            item.add_marker(pytest.mark.micropython)
        if "broker" in used:
            item.add_marker(pytest.mark.mosquitto)
        if "postgres" in used:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster (initdb in a temporary folder, a free 127.0.0.1 port, run
    as the user postgres when the tests run as root), stopped and removed after the test."""
    pg = PrivatePostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def pg_url(postgres: PrivatePostgres) -> str:
    """The URL of a new, empty database in the test's private cluster."""
    return postgres.create_database("anchor")
