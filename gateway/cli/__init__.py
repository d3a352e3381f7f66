"""The `iot-anchor` command line (also `python -m gateway`).

Each command lives in its own module under gateway/, which exposes
`register(subparsers) -> None`; that function adds its sub-parser(s) and sets
`func=<callable taking the parsed args and returning an exit code>`.
To add a command, add its module to COMMAND_MODULES.
Only `AnchorError` is caught here; it is printed as one line `error: what; hint`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from gateway import __version__
from gateway.errors import AnchorError
from gateway.storage import location

COMMAND_MODULES: list[str] = [
    # "gateway.cli.init", ... each with register(subparsers)
    "gateway.cli.init",
    "gateway.cli.device",
    "gateway.cli.ingest",
    "gateway.cli.ledger",
    "gateway.cli.receipt",
    "gateway.cli.broker_config",
    "gateway.cli.run",
    "gateway.cli.serve",
    "gateway.cli.witness",
    "gateway.cli.mirror",
    "gateway.cli.simulate",
    "gateway.cli.demo",
    "gateway.cli.dataset",
    "gateway.cli.downlink",
    "gateway.cli.model",
    "gateway.cli.rules",
    "gateway.cli.store",
]


# What `add_subparsers()` returns, as each command's register() receives it (argparse gives
# the class no public name).
Subcommands = Any


def default_data_dir() -> str:
    return os.environ.get("IOT_ANCHOR_DATA", "./anchor-data")


def add_data_arg(p: argparse.ArgumentParser) -> None:
    """The `--data DIR` and `--store URL` options shared by every command. `main` hands
    --store to gateway.storage.location, so every `Store.open(DIR)` of the command opens it."""
    p.add_argument(
        "--data",
        metavar="DIR",
        default=default_data_dir(),
        help="data directory (default: $IOT_ANCHOR_DATA, else ./anchor-data)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="where the ledger is: postgresql://USER@HOST[:PORT]/DB, or sqlite:PATH "
             "(default: $IOT_ANCHOR_STORE, else DIR/ledger.db); the gateway key stays in DIR",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iot-anchor",
        description="Anchor signed sensor readings in a tamper-evident Merkle-tree ledger.",
    )
    parser.add_argument("--version", action="version", version=f"iot-anchor {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# Container objects allocated (net) before a young-generation collection (Python: 700, at which
# the collector took 7.7 µs of the pipeline's 57 per reading with 20 rules: docs/performance.md,
# "The garbage collector"); cyclic garbage waits for up to this many objects, a few MB.
GC_YOUNG = 50_000


def tuned_collector(young: int = GC_YOUNG) -> tuple[int, int, int]:
    """Set the collector's young-generation threshold to `young` for this process (the
    older generations keep their ratios). Returns the thresholds before, to restore."""
    before = gc.get_threshold()
    gc.set_threshold(young, before[1], before[2])
    return before


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=min(level, logging.INFO) if args.command in ("run", "demo", "simulate") else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    before, location.command_line_store = location.command_line_store, getattr(args, "store", None)
    gc_before = tuned_collector()
    try:
        return int(args.func(args) or 0)
    except AnchorError as e:
        print(f"error: {e.explain()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`iot-anchor device list --json | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        location.command_line_store = before  # main() called in process (tests) leaves none
        gc.set_threshold(*gc_before)
