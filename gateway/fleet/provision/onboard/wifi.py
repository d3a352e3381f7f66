# On the board: join the Wi-Fi with the written config, through the firmware's board layer.

import asyncio

from anchor import config, startup


def join_wifi(path, timeout_ms):
    """Join with the config at path, waiting up to timeout_ms. Print repr((joined, the board's
    reason when not ("wrong_password", "no_ap_found", ...), the IP address or None))."""
    board = startup.make_board(config.load(path))
    ok = asyncio.run(board.join_once(timeout_ms))
    print(repr((ok, board.wifi_error, board.wlan.ifconfig()[0] if ok else None)))
