"""pyproject.toml lists the wheel's packages by hand (the firmware is mapped in under another
name, which setuptools' find cannot list): every package under gateway/ must be on that list,
and the firmware's mapping must point at the tree gateway.fleet.firmware finds in a checkout.
tests/integration/test_wheel.py builds and installs the wheel itself."""

from __future__ import annotations

import tomllib

from conftest import ROOT

from gateway.fleet.firmware import PACKAGE, PACKAGE_LIST, board_files, checkout_root


def setuptools_table() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_gateway_package_is_listed() -> None:
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "gateway").rglob("__init__.py")}
    listed = set(setuptools_table()["packages"])
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {PACKAGE, PACKAGE + ".anchor"}


def test_the_firmware_mapping_is_the_checkout_firmware() -> None:
    cfg = setuptools_table()
    tree = ROOT / cfg["package-dir"][PACKAGE]
    assert checkout_root() == ROOT and tree == ROOT / "firmware"
    assert PACKAGE_LIST in cfg["package-data"][PACKAGE]
    # what a board gets is in the wheel: main.py, boot.py (modules of the mapped package) and
    # anchor/*.py (modules of its listed subpackage anchor); tests/ is not a listed package
    assert {f.split("/")[0] for f in board_files(tree)} <= {"main.py", "boot.py", "anchor"}
