# iot-anchor: runs first at every boot of a board, before main.py. Kept minimal so a mistake in
# the firmware cannot lock the board out of the REPL: no network, no loops here. main.py starts
# the device loop (anchor/startup.py). To stop it, connect with `mpremote` (Ctrl-C).
import gc

gc.collect()
