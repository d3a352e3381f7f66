"""What every bench script shares: the repository root, progress on stderr, the iot-anchor
command line of this environment, and the guard around a script's `main`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from gateway.errors import AnchorError

ROOT = Path(__file__).resolve().parent.parent.parent


def log(msg: str) -> None:
    """A progress line on stderr (stdout holds the summary and the JSON line)."""
    print(msg, file=sys.stderr, flush=True)


def iot_anchor_command(*args: str) -> list[str]:
    """`iot-anchor ARGS...`: the venv's entry point, or `python -m gateway` without one."""
    exe = Path(sys.executable).parent / "iot-anchor"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "gateway", *args]


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; an AnchorError is explained and exits 2, Ctrl-C exits 130."""
    try:
        sys.exit(main())
    except AnchorError as e:
        print(f"error: {e.explain()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
