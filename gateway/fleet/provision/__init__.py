"""`iot-anchor device provision`: put the firmware on a board, give it a key, register it.

The steps, each with its own error when it fails:

1. find the board (``--port auto``: the first USB serial port), read its platform, MicroPython
   version and ``.mpy`` format (``sys.implementation._mpy``);
   then hold it: create ``/anchor.hold`` and hard-reset it into its REPL, so a watchdog armed
   by a running firmware cannot reset it mid-way (start-up returns early while the file exists;
   it is removed before the final reset);
2. compile the firmware (the files listed in its package.json, gateway.fleet.firmware) with an
   ``mpy-cross`` that emits exactly that ``.mpy`` version;
3. copy it to the board (``/lib/anchor/*.mpy``, ``/boot.py``, ``/main.py``) and write the config
   (``/anchor.json``);
4. check from the board itself that it joins the Wi-Fi and reaches the broker;
5. generate the key on the board (``os.urandom`` there; the private key never leaves it), or keep
   the one it has unless ``new_key``; read the public key back;
6. register the public key with the gateway, as ``iot-anchor device add`` does (or rotate it,
   for ``--new-key``);
7. reset the board and wait for its first signed reading on ``anchor/<id>/readings``, checking
   the signature against the registered key.

The modules, by what they hold:

- ``transport``: `BoardTransport`, how the steps reach a board: `MpremoteBoard` (a real board on
  a serial port, mpremote's raw REPL) and `LocalUnixBoard` (the MicroPython Unix port with a
  directory standing in for the board's flash: tests, and trying the flow without hardware);
- ``onboard/``: the MicroPython code run on the board (board info, files, config, Wi-Fi,
  broker, key), as modules;
- ``compile``: choosing mpy-cross for the board's .mpy format, compiling the firmware (step 2);
- ``install``: copying it and the config (step 3);
- ``checks``: the board's platform and version, the broker URL, Wi-Fi and broker from the board
  (steps 1 and 4);
- ``keys``: the key on the board and its registration (steps 5 and 6);
- ``first_reading``: the wait for the first signed reading (step 7);
- ``flow``: `Options`, `Result` and `provision()`, the steps in order;
- ``board_paths``, ``errors``: where things go on the board; `ProvisionError`, `BoardError`.

The names below are the public surface; the CLI (gateway/cli/provision.py) and the tests use
them from here.
"""

from gateway.fleet.provision.checks import (
    MIN_VERSION,
    SUPPORTED_PLATFORMS,
    check_board,
    check_broker_from_board,
    check_broker_from_host,
    check_wifi,
    parse_broker,
)
from gateway.fleet.provision.compile import (
    choose_mpy_cross,
    compile_firmware,
    mpy_cross_candidates,
    mpy_cross_version,
)
from gateway.fleet.provision.errors import BoardError, ProvisionError
from gateway.fleet.provision.first_reading import wait_first_reading
from gateway.fleet.provision.flow import Options, Result, board_config, provision
from gateway.fleet.provision.install import RETIRED_MODULES, install
from gateway.fleet.provision.keys import ensure_key, register_key
from gateway.fleet.provision.transport import (
    BoardInfo,
    BoardTransport,
    LocalUnixBoard,
    MpremoteBoard,
)

__all__ = [
    "MIN_VERSION", "RETIRED_MODULES", "SUPPORTED_PLATFORMS", "BoardError", "BoardInfo",
    "BoardTransport", "LocalUnixBoard", "MpremoteBoard", "Options", "ProvisionError", "Result",
    "board_config", "check_board", "check_broker_from_board", "check_broker_from_host",
    "check_wifi", "choose_mpy_cross", "compile_firmware", "ensure_key", "install",
    "mpy_cross_candidates", "mpy_cross_version", "parse_broker", "provision", "register_key",
    "wait_first_reading",
]
