#!/usr/bin/env python3
"""The gateway's import directions, checked (`make lint`, and tests/unit/test_layers.py).

Each subpackage of gateway/ sits in a layer and may import only from its own layer and the
layers below it; `gateway.errors` and `gateway` itself (its version) may be imported from
anywhere. The pure layers import nothing that does I/O. docs/architecture.md draws the same
table. Every import counts, also one inside a function and one under TYPE_CHECKING.

    python tools/check_layers.py       # prints each violation; exit 1 if there is one
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# top layer first; a package may import from its own row and every row below it
LAYERS: list[tuple[str, ...]] = [
    ("cli",),
    ("sim",),
    ("service", "fleet", "http", "console"),
    ("mqtt", "ingest", "audit", "observe", "provenance", "tlog", "rules", "downlink"),
    ("storage",),
    ("ledger",),
    ("wire",),
]
EVERYWHERE = {"gateway", "gateway.errors"}
PURE = ("wire", "ledger")
# modules whose purpose is I/O: a pure package imports none of them
IO_MODULES = {
    "asyncio", "http", "multiprocessing", "select", "selectors", "shutil", "socket",
    "socketserver", "sqlite3", "ssl", "subprocess", "tempfile", "threading", "urllib.request",
    "paho", "aiomqtt", "psycopg", "aiohttp", "requests",
}

ROOT = Path(__file__).resolve().parents[1]


def _layer_of(package: str) -> int | None:
    for i, row in enumerate(LAYERS):
        if package in row:
            return i
    return None


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(root).with_suffix("")
    here = list(rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1] if node.level > 1 else here
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod in ("gateway",) or mod.startswith("gateway."):
                # `from gateway.x import y` may name the module gateway.x.y
                out += [(node.lineno, f"{mod}.{a.name}") for a in node.names
                        if (root / (mod.replace(".", "/") + f"/{a.name}.py")).exists()
                        or (root / (mod.replace(".", "/") + f"/{a.name}")).is_dir()]
    return out


def violations(root: Path = ROOT) -> list[str]:
    found: list[str] = []
    seen: set[tuple[str, int] | str] = set()  # one report per import line, per package
    for path in sorted((root / "gateway").rglob("*.py")):
        parts = path.relative_to(root).parts
        if len(parts) < 3:
            continue  # gateway/__init__.py, __main__.py, errors.py: above the layers
        package = parts[1]
        mine = _layer_of(package)
        where = "/".join(parts)
        if mine is None:
            if package in seen:
                continue
            seen.add(package)
            found.append(f"{where}: package gateway.{package} is in no layer of "
                         "tools/check_layers.py; add it to LAYERS")
            continue
        for line, mod in _imports(path, root):
            if (where, line) in seen:
                continue
            before = len(found)
            if mod.startswith("gateway."):
                if mod in EVERYWHERE:
                    continue
                target = mod.split(".")[1]
                theirs = _layer_of(target)
                if theirs is None:
                    continue  # gateway.errors, gateway.__main__: not a layer
                if theirs < mine:
                    found.append(f"{where}:{line}: gateway.{package} imports {mod}, a layer "
                                 "above it (see docs/architecture.md, 'Import directions')")
            elif package in PURE:
                top = mod.split(".")[0]
                if mod in IO_MODULES or top in IO_MODULES:
                    found.append(f"{where}:{line}: gateway.{package} is pure and imports "
                                 f"{mod}; move the I/O to a package of a layer above")
            if len(found) > before:
                seen.add((where, line))
    return found


def main() -> int:
    found = violations()
    for v in found:
        print(v)
    if found:
        print(f"{len(found)} import(s) against the layers", file=sys.stderr)
        return 1
    print("import directions: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
