"""The board self-test (firmware/selftest.py) on the Unix port too, with its double-precision
floats: the same oracle as on the emulated board, so a difference between the two runs points at
the port, not at the checker."""

from __future__ import annotations

from conftest import run_mp
from selftest_oracle import check


def test_selftest_on_unix_port(micropython: str) -> None:
    p = run_mp(micropython, "firmware/selftest.py", "5", timeout=120)
    assert p.returncode == 0, p.stderr
    r = check(p.stdout, float32=False)
    assert r["platform"] == "linux"
    assert sum(1 for k in r if k.startswith("key") and k.endswith("-sig")) == 5
