"""Where provisioning puts things on the board, relative to the board's root (the working
directory of the on-board code, on a board and on the Unix port alike)."""

from __future__ import annotations

CONFIG_PATH = "anchor.json"  # the config, read by firmware/anchor/config.py
LIB_DIR = "lib/anchor"  # the compiled firmware package
HOLD = "anchor.hold"  # firmware/anchor/startup.py HOLD: while it exists, start-up returns early
