# iot-anchor firmware entry point.
#
# On the Unix port, a command line (tests, simulations, scripting a device):
#   micropython firmware/main.py keygen --dir DIR [--id DEVICE_ID] [--secret HEX64]
#       creates the device state in DIR; prints the public key (130 hex) on its last line
#   micropython firmware/main.py sign --dir DIR --data JSON [--ts UNIX_SECONDS|none]
#       signs one reading with the next seq and prev, persists the state, and prints the whole
#       COSE message in hex on its last line (--ts defaults to the clock; "none" leaves it out)
#   micropython firmware/main.py run ...
#       the device loop: anchor/device.py (main(args)), when present
# --dir defaults to $IOT_ANCHOR_DEVICE_DIR. An error prints one line "error: ..." on stderr and
# exits 1 (running out of heap too); a usage error exits 2. `run --help` prints run's options.
#
# On a board, main.py runs at boot with no arguments and starts the device loop.

import sys

from anchor import Error, unload

_UNIX = sys.platform in ("linux", "darwin", "win32")


def main(argv):
    """Run a command; returns the process exit status. Kept small: main.py is compiled from
    source at every start (RAM on a board), the commands live in anchor/cli.py and
    anchor/device.py."""
    if not argv and not _UNIX:
        from anchor import startup  # a board: config, board layer, device loop

        return startup.main() or 0
    from anchor import cli

    status = cli.main(argv)
    if status is not None:
        return status
    cli = None
    unload("cli")
    try:
        from anchor import device
    except ImportError as e:
        print("error: the device loop is not available in this build (%s)" % e, file=sys.stderr)
        return 1
    try:
        return device.main(argv[1:]) or 0
    except Error as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    try:
        _status = main(sys.argv[1:] if _UNIX else [])
    except MemoryError:
        if not _UNIX:
            raise  # a board: the traceback on the REPL, then the watchdog resets it
        print("error: out of memory (the heap is too small for this command); give MicroPython"
              " a bigger heap (-X heapsize=...), or run the firmware compiled to .mpy",
              file=sys.stderr)
        _status = 1
    if _status:
        sys.exit(_status)
