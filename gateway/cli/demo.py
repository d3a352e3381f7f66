"""`iot-anchor demo` (also `make demo`): broker, gateway and 3 MicroPython devices, ~20 s."""

from __future__ import annotations

import signal
from typing import Any

from gateway.cli import Subcommands
from gateway.sim.demo import run_demo


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "demo", help="run broker, gateway and 3 MicroPython devices for ~20 s and audit",
        description="Start a private Mosquitto on a free loopback port, a fresh data dir, the "
                    "gateway and 3 MicroPython devices; run about 20 s, stop them cleanly, "
                    "then show readings published and anchored, the ledger, its checkpoint, "
                    "'ledger verify' and a receipt verified offline. Exits 0 only if all holds. "
                    "It prints the address of the operator console (a free port on "
                    "127.0.0.1), which stays up while the demo runs.")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary folder (data dir, logs) and print its path, and "
                        "keep the console up after the demo until Ctrl-C")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: Any) -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    return run_demo(keep=args.keep)


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the devices and workers like Ctrl-C does (the `finally` blocks run)."""
    raise KeyboardInterrupt
