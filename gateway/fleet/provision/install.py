"""Copying the compiled firmware and the config onto a board."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gateway.fleet.provision import onboard
from gateway.fleet.provision.board_paths import CONFIG_PATH, LIB_DIR
from gateway.fleet.provision.transport import BoardTransport

# Modules of earlier firmware versions, since renamed or removed: install() deletes them, so a
# board provisioned before keeps no old .mpy (an old one would still be importable).
RETIRED_MODULES = ("hmac256", "cborx", "cosex", "mqttx", "outboxx", "statex", "statenew",
                   "devicex", "p256x", "p256key")


def install(board: BoardTransport, files: Sequence[tuple[str, bytes]],
            cfg: dict[str, object]) -> None:
    """Copy the firmware (`files`: (board path, contents), as compile_firmware makes them) and
    write the config `cfg` to CONFIG_PATH. Stale copies of the package (a .py beside the new
    .mpy, a root-level anchor/ from a mip install, which would shadow /lib, and the modules of
    earlier versions, RETIRED_MODULES) go first."""
    stems = [Path(p).name.rsplit(".", 1)[0] for p, _ in files if p.startswith(LIB_DIR + "/")]
    stale = [f"{LIB_DIR}/{stem}.mpy" for stem in RETIRED_MODULES]
    for stem in stems + list(RETIRED_MODULES):
        stale += [f"{LIB_DIR}/{stem}.py", f"anchor/{stem}.py", f"anchor/{stem}.mpy"]
    board.remove(stale)
    board.makedirs(LIB_DIR)
    for path, data in files:
        board.write_file(path, data)
    board.write_file(CONFIG_PATH, json.dumps(cfg).encode())
    # the board parses it with its own config module, so a bad key fails here, not at boot
    board.exec(onboard.code("config", "check", CONFIG_PATH))
