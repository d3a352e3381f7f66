"""MicroPython code that provisioning runs on the board, kept as real modules so that ruff
lints them (with the firmware's settings: ruff.toml here) and they read as code.

They run through `BoardTransport.exec` (mpremote's raw REPL on a board, `micropython -c` on the
Unix port), never under CPython: MicroPython-compatible code only (no f-strings in what a board
compiles, `%` formatting, no CPython-only modules). Each module defines functions and does
nothing when it runs; `code()` sends a module's source followed by one call. What a function
reports it prints, one line (a repr for CPython's ast.literal_eval, or a word), which the host
reads from the last line of the output. The board's working directory is its root, so paths are
relative to it.

They ship as package data of the gateway (importlib.resources reads them from the wheel).
"""

from __future__ import annotations

from importlib.resources import files


def source(module: str) -> str:
    """The source of the on-board module `module` (e.g. "key")."""
    return files(__name__).joinpath(f"{module}.py").read_text()


def code(module: str, call: str, *args: object) -> str:
    """Code for BoardTransport.exec: the module's source, then `call(*args)`.

    Requires args of str, bytes, int, bool, None, or lists and tuples of them: their repr is the
    same literal in MicroPython."""
    return f"{source(module)}\n{call}({', '.join(repr(a) for a in args)})\n"
