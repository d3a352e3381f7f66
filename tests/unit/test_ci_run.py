"""`.ci/run` runs `make test`, then `make test-boards` (issue 5), and fails when either fails.

It runs here against a stand-in `make` (and `apt-get`) on PATH that only records its
arguments, in a copy of the script outside the repository, so that whatever lies beside the
script cannot decide which targets CI runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ci(tmp_path: Path, fail_target: str = "") -> tuple[int, list[str]]:
    tree = tmp_path / "clone"
    (tree / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", tree / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("make", "apt-get"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n'
                        f'[ "{tool} $*" = "make {fail_target}" ] && exit 2\nexit 0\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    p = subprocess.run(["bash", str(tree / ".ci" / "run")], env=env, capture_output=True,
                       text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return p.returncode, [c for c in calls if c.startswith("make")]


def test_ci_runs_make_test_then_make_test_boards(tmp_path: Path) -> None:
    assert ci(tmp_path) == (0, ["make test", "make test-boards"])


def test_ci_fails_when_make_test_fails_and_stops_there(tmp_path: Path) -> None:
    rc, calls = ci(tmp_path, fail_target="test")
    assert rc != 0 and calls == ["make test"]


def test_ci_fails_when_test_boards_fails(tmp_path: Path) -> None:
    rc, calls = ci(tmp_path, fail_target="test-boards")
    assert rc != 0 and calls == ["make test", "make test-boards"]
