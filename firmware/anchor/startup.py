# Board start-up: what main.py runs on a board (no command line there). Loads the config
# (/anchor.json), picks the board layer, arms the watchdog, creates the key on first boot (from
# os.urandom, on the board: the private key never leaves it), and runs the device loop forever.
#
# Paths are relative to `root`: "/" on a board; "" (the working directory) when a test boots a
# directory that stands in for a board's flash (LocalUnixBoard in
# gateway/fleet/provision/transport.py).
#
# Hold: when the file `anchor.hold` exists at the root, start-up stops before it arms the
# watchdog and returns to the REPL. `device provision` creates it and hard-resets the board
# first, because a watchdog armed by a running firmware cannot be stopped (RP2, ESP32) and would
# reset the board in the middle of provisioning; it removes the file before the final reset.
import sys

from anchor import Error, unload

COLD = ("config",)
_BOARD_PLATFORMS = ("esp32", "rp2")
HOLD = "anchor.hold"


def make_board(cfg):
    """The board layer named by cfg["board"], else the one for sys.platform."""
    name = cfg.get("board") or sys.platform
    if name == "esp32":
        from anchor.board_esp32 import Board
    elif name == "rp2":
        from anchor.board_rp2 import Board
    else:
        from anchor.board_unix import Board
    return Board(cfg)


def load_device(board, d):
    """The device state in d; on first boot a new key, generated here on the board."""
    from anchor.state import Device

    try:
        return Device.load(d)
    except Error:
        if _has_key(d):
            raise  # a damaged key file: do not silently replace the device's identity
        return Device.create(d, dev_id=board.device_id())


def _has_key(d):
    from anchor.state import KEY_FILE

    return _exists(d + "/" + KEY_FILE)


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def main(root=None):
    if root is None:
        root = "/" if sys.platform in _BOARD_PLATFORMS else ""
    import asyncio

    from anchor import device  # noqa: F401 - resident: loaded before what start-up drops again

    if _exists(root + HOLD):
        print("iot-anchor: %s%s exists: not starting (provisioning); remove it to run" % (
            root, HOLD))
        return 0
    from anchor import config

    cfg = config.load(root + "anchor.json")
    config = None
    cfg["dir"] = root + cfg["dir"].lstrip("/")
    board = make_board(cfg)
    try:
        # first boot: the key is made before the watchdog is armed (P-256 keygen and the comb
        # table take seconds on a board, without a chance to feed it)
        dev = load_device(board, cfg["dir"])
        board.start_watchdog()
        from anchor import device_setup

        opts = device_setup.parse_args(["--dir", cfg["dir"], "--broker", cfg["broker"]])
        board, dev, ob, client, guard = device_setup.build(opts, board)
        loop = device_setup.make_loop(board, dev, ob, client, guard, interval=cfg["interval"])
        device_setup.requeue_last(loop)
        device_setup = None
        unload()    # every cold module: what start-up loaded (config included)
        asyncio.run(loop.run())
    except Exception as e:  # noqa: BLE001 - a board must not stop: report, then restart
        sys.print_exception(e)
        if root != "/":
            raise
        import time

        import machine

        board.led(True)
        time.sleep(10)  # long enough to read the message on the console, then start over
        machine.reset()
