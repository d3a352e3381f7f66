"""firmware/package.json (for `mpremote mip install github:ORG/REPO/firmware/package.json`)
lists every firmware file a board needs, each once, and nothing that does not exist."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from conftest import FIRMWARE, run_mp

STANDINS = Path(__file__).with_name("standins")
# Files in firmware/ that a board does not need, and why.
NOT_FOR_BOARDS = {
    "selftest.py": "signing self-test, run with `mpremote run` (tests/boards)",
    "manifest.py": "the frozen-build manifest, read by MicroPython's build, not by a board",
    "anchor/board_unix.py": "the Unix port's board layer; board.py imports it only there",
}


def package() -> dict:
    return json.loads((FIRMWARE / "package.json").read_text())


def firmware_sources() -> set[str]:
    out = {p.name for p in FIRMWARE.glob("*.py")}
    out |= {f"anchor/{p.name}" for p in (FIRMWARE / "anchor").glob("*.py")}
    return out


def anchor_imports(path: Path) -> set[str]:
    """anchor/<module>.py files imported by the source at path (every branch)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "anchor":
                for a in node.names:
                    if (FIRMWARE / "anchor" / f"{a.name}.py").exists():
                        found.add(f"anchor/{a.name}.py")
                found.add("anchor/__init__.py")
            elif node.module.startswith("anchor."):
                found.add(f"anchor/{node.module.split('.', 1)[1]}.py")
                found.add("anchor/__init__.py")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("anchor."):
                    found.add(f"anchor/{a.name.split('.', 1)[1]}.py")
    return found


def test_format_is_mip_package() -> None:
    pkg = package()
    assert set(pkg) == {"urls", "version"}
    assert pkg["version"].count(".") == 2
    for entry in pkg["urls"]:
        assert isinstance(entry, list) and len(entry) == 2
        dest, src = entry
        assert dest == src, "installed under the same path it has in firmware/"
        assert not src.startswith(("/", "firmware/")), "relative to firmware/"


def test_lists_exactly_the_board_files() -> None:
    listed = [src for _, src in package()["urls"]]
    assert len(listed) == len(set(listed)), "each file once"
    for src in listed:
        assert (FIRMWARE / src).is_file(), f"package.json lists {src}, which does not exist"
    missing = firmware_sources() - set(listed) - set(NOT_FOR_BOARDS)
    assert not missing, f"firmware files neither in package.json nor excluded: {missing}"
    for src in NOT_FOR_BOARDS:
        assert src not in listed


def test_import_closure_is_listed() -> None:
    listed = {src for _, src in package()["urls"]}
    todo = ["boot.py", "main.py", "anchor/startup.py"]
    seen: set[str] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += sorted(anchor_imports(FIRMWARE / f))
    needed = seen - set(NOT_FOR_BOARDS)
    assert needed <= listed, f"imported on a board but not packaged: {needed - listed}"


def test_packaged_files_alone_import_on_both_boards(micropython: str, tmp_path: Path) -> None:
    """Install only the listed files (as mip would) and import the whole firmware with the
    ESP32 and the RP2 board layer, against the stand-ins: nothing else is needed."""
    for _, src in package()["urls"]:
        (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIRMWARE / src, tmp_path / src)
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(STANDINS)!r}, {str(tmp_path)!r}]\n"
        "from anchor import startup, config, device, mqtt, outbox, state, cose, bme280\n"
        "for name in ('esp32', 'rp2'):\n"
        "    b = startup.make_board(config.merge({'board': name}))\n"
        "    print(name, b.name, type(b.read_sensors()).__name__)\n"
        "print(sorted(m for m in sys.modules if m.startswith('anchor')))\n"
    )
    p = run_mp(micropython, "-c", code, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "esp32 esp32 dict" and lines[1] == "rp2 rp2 dict"
    assert "anchor.board_unix" not in lines[2]
