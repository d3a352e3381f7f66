"""`device provision` end to end against the MicroPython Unix port standing in for a board
(gateway.fleet.provision.LocalUnixBoard: a directory as the board's flash, the board's modules
`machine`, `network`, `ntptime` from tests/firmware/standins, the RP2 board layer).

Every step runs for real: board info, mpy-cross matched to the binary's .mpy version, compiled
firmware copied into the directory, config written and parsed on the board, Wi-Fi join (the
stand-in access point), broker reachability from the board, key generation on the board, the
registration in the gateway's ledger, the reset (the firmware boots from the directory) and its
first signed reading arriving on the real Mosquitto. Plus the errors each step reports.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from gateway.fleet.firmware import board_files
from gateway.fleet.provision import (
    BoardInfo,
    LocalUnixBoard,
    MpremoteBoard,
    Options,
    ProvisionError,
    check_board,
    choose_mpy_cross,
    compile_firmware,
    install,
    provision,
)
from gateway.sim.broker import PrivateBroker, free_port

STANDINS = ROOT / "tests" / "firmware" / "standins"
PRELUDE = "import machine, network\nmachine.sim.flavour('rp2')\nnetwork.sim.flavour('rp2')\n"


@pytest.fixture
def gateway_data(tmp_path: Path) -> Path:
    data = tmp_path / "gw"
    p = subprocess.run([sys.executable, "-m", "gateway", "init", "--data", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return data


@pytest.fixture
def board(tmp_path: Path, micropython: str) -> Iterator[LocalUnixBoard]:
    b = LocalUnixBoard(tmp_path / "board", micropython, prelude=PRELUDE, extra_path=[STANDINS])
    try:
        yield b
    finally:
        b.close()


def options(b: PrivateBroker, data: Path, **kw: object) -> Options:
    o = Options(dev_id="pico-1", wifi_ssid="anchor-lab", wifi_password="correct horse",
                broker=b.url, data=str(data), interval=1,
                board_config={"board": "rp2", "watchdog_ms": 8000}, wait=60,
                platforms=("linux",))
    return dataclasses.replace(o, **kw)


def test_install_removes_the_modules_of_earlier_versions(board: LocalUnixBoard,
                                                         tmp_path: Path) -> None:
    old = ["lib/anchor/cborx.mpy", "lib/anchor/hmac256.mpy", "lib/anchor/devicex.py",
           "anchor/statex.py", "anchor/p256key.mpy"]
    for path in old:
        board.write_file(path, b"# an earlier firmware's module\n")
    files = compile_firmware(choose_mpy_cross(board.info().mpy_version), tmp_path / "mpy")
    install(board, files, {"id": "pico-1"})
    assert not [p for p in old if (board.root / p).exists()]
    assert (board.root / "lib/anchor/cbor_decode.mpy").is_file()


def registered(data: Path) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "gateway", "device", "list", "--json", "--data",
                        str(data)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_provision_then_reprovision_keeps_key_then_new_key(
        board: LocalUnixBoard, broker: PrivateBroker, gateway_data: Path) -> None:
    said: list[str] = []
    r = provision(board, options(broker, gateway_data), say=said.append)
    assert r.key_was_new and r.registered == "add" and r.first_seq == 0
    assert r.first_ts is not None  # the stand-in NTP set the clock before the first reading
    assert r.files == len(board_files())
    # the board's flash: compiled modules, source entry points, the config; the private key
    # stays in the board's state directory and only the public key was read back
    root = board.root
    assert (root / "lib/anchor/p256.mpy").is_file() and not (root / "lib/anchor/p256.py").exists()
    assert (root / "main.py").is_file() and (root / "boot.py").is_file()
    cfg = json.loads((root / "anchor.json").read_text())
    assert cfg["id"] == "pico-1" and cfg["broker"] == broker.url and cfg["board"] == "rp2"
    key = json.loads((root / "data/key.json").read_text())
    assert key["public"] == r.public_key.hex()
    assert not any(key["secret"] in line for line in said)
    rows = registered(gateway_data)
    assert [(d["id"], d["key"]) for d in rows] == [("pico-1", r.public_key.hex())]
    assert any("first reading: seq 0" in s for s in said)
    assert 20 < float(said[-1].split("'mcu_temp': ")[1].split("}")[0]) < 35  # stand-in ADC 27 C

    assert board.running()  # the firmware keeps running after provisioning...
    r2 = provision(board, options(broker, gateway_data))  # ...and is held for re-provisioning
    assert not (root / "anchor.hold").exists()
    assert not r2.key_was_new and r2.public_key == r.public_key and r2.registered == "unchanged"
    assert r2.first_seq is not None and r2.first_seq > r.first_seq  # seq continues

    r3 = provision(board, options(broker, gateway_data, new_key=True))
    assert r3.key_was_new and r3.public_key != r.public_key and r3.registered == "rotate"
    assert r3.first_seq is not None and r3.first_seq > r2.first_seq, "no seq reused"
    assert registered(gateway_data)[0]["key"] == r3.public_key.hex()


def test_wifi_failure_is_named(board: LocalUnixBoard, broker: PrivateBroker,
                               gateway_data: Path) -> None:
    with pytest.raises(ProvisionError, match="Wi-Fi failed: wrong password") as e:
        provision(board, options(broker, gateway_data, wifi_password="hunter2"))
    assert "--wifi-password" in e.value.hint
    with pytest.raises(ProvisionError, match="Wi-Fi failed: no ap found") as e:
        provision(board, options(broker, gateway_data, wifi_ssid="elsewhere"))
    assert "2.4 GHz" in e.value.hint
    assert registered(gateway_data) == [], "nothing registered when the board cannot connect"
    assert not (board.root / "data/key.json").exists()
    # the board stays held (not running a half-provisioned firmware) until provisioned again
    assert (board.root / "anchor.hold").exists()


def test_broker_unreachable(board: LocalUnixBoard, gateway_data: Path,
                            broker: PrivateBroker) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(ProvisionError, match="broker unreachable: cannot connect to 127.0.0.1"):
        provision(board, options(broker, gateway_data, broker=dead))
    with pytest.raises(ProvisionError, match="is not of the form mqtt://"):
        provision(board, options(broker, gateway_data, broker="http://x"))


def test_board_already_holding_another_device_key(board: LocalUnixBoard, broker: PrivateBroker,
                                                  gateway_data: Path) -> None:
    provision(board, options(broker, gateway_data, wait=60))
    with pytest.raises(ProvisionError, match="already holds the key of device 'pico-1'"):
        provision(board, options(broker, gateway_data, dev_id="pico-2"))


def test_no_board_and_wrong_version() -> None:
    with pytest.raises(ProvisionError, match="no MicroPython board answers on /dev/nonexistent"):
        MpremoteBoard("/dev/nonexistent")
    info = BoardInfo("rp2", (1, 20, 0), 6 | 1 << 8, "Raspberry Pi Pico W", "e661", True, 150000)
    with pytest.raises(ProvisionError, match="runs MicroPython 1.20.0; the firmware needs 1.23"):
        check_board(info)
    with pytest.raises(ProvisionError, match="for 'esp8266'"):
        check_board(dataclasses.replace(info, platform="esp8266", version=(1, 25, 0)))
    check_board(dataclasses.replace(info, version=(1, 25, 0)))


def test_no_board_on_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    import serial.tools.list_ports

    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
    with pytest.raises(ProvisionError, match="no board found") as e:
        MpremoteBoard.find("auto")
    assert "--port" in e.value.hint


def test_cli_reports_missing_board(gateway_data: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "gateway", "device", "provision", "pico-9",
                        "--port", "/dev/nonexistent", "--wifi", "lab", "--wifi-password", "pw",
                        "--broker", "mqtt://127.0.0.1:1", "--data", str(gateway_data)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: no MicroPython board answers on /dev/nonexistent")
