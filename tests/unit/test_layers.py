"""The import directions of docs/architecture.md hold (tools/check_layers.py), and the check
would see a break."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import check_layers  # noqa: E402


def test_the_tree_keeps_its_import_directions() -> None:
    assert check_layers.violations() == []


def test_an_upward_or_io_import_is_named(tmp_path: Path) -> None:
    for pkg in ("wire", "storage", "cli", "extra"):
        (tmp_path / "gateway" / pkg).mkdir(parents=True)
        (tmp_path / "gateway" / pkg / "__init__.py").write_text("")
    (tmp_path / "gateway" / "wire" / "bad.py").write_text(
        "import sqlite3\nfrom gateway.storage import thing\n")
    (tmp_path / "gateway" / "storage" / "thing.py").write_text(
        "def f():\n    from gateway.cli import main\n")
    (tmp_path / "gateway" / "cli" / "ok.py").write_text("from gateway.wire import bad\n")
    (tmp_path / "gateway" / "extra" / "x.py").write_text("")
    found = check_layers.violations(tmp_path)
    assert any("wire/bad.py:1" in v and "pure" in v and "sqlite3" in v for v in found)
    assert any("wire/bad.py:2" in v and "gateway.storage" in v for v in found)
    assert any("storage/thing.py:2" in v and "gateway.cli" in v for v in found)
    assert any("gateway.extra is in no layer" in v for v in found)
    assert not any("cli/ok.py" in v for v in found)
    assert len(found) == 4
