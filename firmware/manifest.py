# The firmware frozen into a MicroPython image (the micropython-lib manifest convention, read by
# MicroPython's build; docs.micropython.org, "MicroPython manifest files"). Frozen, the bytecode
# stays in flash: the device loop needs far less heap than from .mpy files (docs/boards.md,
# "Memory"). Build a board's image with a manifest of your own that includes the board's and
# this one, e.g.
#   include("$(BOARD_DIR)/manifest.py")      # the port's modules, asyncio among them
#   include("/path/to/iot-anchor/firmware/manifest.py")
# and `make BOARD=... FROZEN_MANIFEST=/path/to/that/manifest.py` in the port's directory.
# main.py is frozen too: a board then runs it from the image (a frozen main.py goes before one
# on the file system) and needs only /anchor.json on its flash. boot.py is left to the file
# system, where it only collects garbage. The whole anchor package is frozen, board_unix.py
# included (a few KB of flash on a board, which never imports it).

metadata(description="iot-anchor firmware: signed sensor readings", version="0.1.0",
         license="MIT")
package("anchor")
module("main.py")
