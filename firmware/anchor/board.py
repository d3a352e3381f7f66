# The board layer for this port, chosen once by sys.platform. Only the chosen module is
# imported (board_esp32/board_rp2 need `machine` and `network`, which the Unix port lacks).
# The interface every layer implements is documented in board_unix.py.
import sys

PLATFORM = sys.platform

if PLATFORM == "esp32":
    from anchor.board_esp32 import Board
elif PLATFORM == "rp2":
    from anchor.board_rp2 import Board
else:  # "linux", "darwin": the Unix port
    from anchor.board_unix import Board

__all__ = ("Board", "PLATFORM")
