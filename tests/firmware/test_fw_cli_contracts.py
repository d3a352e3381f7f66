"""The firmware command line as an outside checker drives it: `run --help`, and an error
(running out of heap included) is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

from conftest import FIRMWARE, run_mp

MAIN = str(FIRMWARE / "main.py")


def test_run_help_prints_the_run_options(micropython: str) -> None:
    for args in (["run", "--help"], ["run", "-h"], ["run", "--dir", "x", "--help"]):
        r = run_mp(micropython, MAIN, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert r.stdout.startswith("usage: micropython main.py run --dir DIR"), r.stdout
        for opt in ("--broker", "--interval", "--count", "--timeout", "--ack-timeout"):
            assert opt in r.stdout
        assert r.stderr == ""


def test_out_of_memory_is_one_line_not_a_traceback(micropython: str, tmp_path: Path) -> None:
    # 24 KiB is too small for keygen on any build (from sources or .mpy, 32- or 64-bit)
    r = run_mp(micropython, MAIN, "keygen", "--dir", str(tmp_path / "d"), heapsize="24k")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory"), r.stderr
    assert "heapsize" in lines[0]  # what to do next
