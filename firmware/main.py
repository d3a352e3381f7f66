# iot-anchor firmware entry point.
#
# On the Unix port, a command line (tests, simulations, scripting a device):
#   micropython firmware/main.py keygen --dir DIR [--id DEVICE_ID] [--secret HEX64]
#           [--downlink-key HEX]
#       creates the device state in DIR; prints the public key (130 hex) on its last line;
#       with the gateway's downlink key (`iot-anchor downlink key`) the device can check acks
#   micropython firmware/main.py trust --dir DIR --downlink-key HEX
#       gives an existing device the gateway's downlink key (DIR/gateway.json)
#   micropython firmware/main.py status --dir DIR
#       one JSON line: next_seq, outbox_waiting, last_command, downlink_refused, ...
#   micropython firmware/main.py sign --dir DIR --data JSON [--ts UNIX_SECONDS|none]
#       signs one reading with the next seq and prev, persists the state, and prints the whole
#       COSE message in hex on its last line (--ts defaults to the clock; "none" leaves it out)
#   micropython firmware/main.py run ...
#       the device loop: anchor/device.py (main(args)), when present
# --dir defaults to $IOT_ANCHOR_DEVICE_DIR. An error prints one line "error: ..." on stderr and
# exits 1 (running out of heap too); a usage error exits 2. `run --help` prints run's options.
#
# On a board, main.py runs at boot with no arguments and starts the device loop.
#
# Kept to a few lines: MicroPython compiles main.py from source at every start, and what that
# leaves behind (its names, its strings) stays in RAM while the device loop runs. The dispatch
# is anchor.main (anchor/__init__.py), compiled to .mpy on a board.

import sys

from anchor import main

if __name__ == "__main__":
    _status = main(sys.argv[1:])
    if _status:
        sys.exit(_status)
