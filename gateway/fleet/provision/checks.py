"""The checks before and during provisioning: the board's platform and MicroPython version, the
broker URL, and from the board itself its Wi-Fi and its path to the broker."""

from __future__ import annotations

import ast
import socket
from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.fleet.provision import onboard
from gateway.fleet.provision.board_paths import CONFIG_PATH
from gateway.fleet.provision.errors import ProvisionError
from gateway.fleet.provision.transport import BoardInfo, BoardTransport
from gateway.wire.broker_url import BrokerUrl, parse_broker_url

SUPPORTED_PLATFORMS = ("esp32", "rp2")
MIN_VERSION = (1, 23)  # .mpy v6.3, the asyncio the firmware is tested with
_BROKER_EXAMPLE = "mqtt://192.168.1.10:1883"


def check_board(info: BoardInfo, platforms: Sequence[str] = SUPPORTED_PLATFORMS) -> None:
    """Wrong platform or MicroPython version -> ProvisionError."""
    if info.platform not in platforms:
        raise ProvisionError(
            f"the board runs MicroPython for '{info.platform}', which this firmware does not "
            f"support",
            f"use an {' or '.join(platforms)} board (ESP32, ESP32-S2/S3/C3/C6, "
            "Raspberry Pi Pico W)",
        )
    if info.version[:2] < MIN_VERSION:
        raise ProvisionError(
            f"the board runs MicroPython {info.version_text}; the firmware needs "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or later",
            "flash a current MicroPython release for the board "
            "(https://micropython.org/download/), then provision again",
        )


def parse_broker(url: str) -> BrokerUrl:
    """--broker as the board will reach it (mqtt://HOST[:PORT], mqtts://..., or HOST[:PORT]);
    ProvisionError when it is none of these."""
    try:
        return parse_broker_url(url, bare_ok=True, what="--broker", example=_BROKER_EXAMPLE)
    except ConfigError as e:
        raise ProvisionError(e.what, "give the broker as the board will reach it, e.g. "
                             + _BROKER_EXAMPLE) from None


def check_broker_from_host(url: str, timeout: float = 5) -> None:
    """ProvisionError unless this machine can open a TCP connection to the broker at `url`."""
    u = parse_broker(url)
    try:
        with socket.create_connection((u.host, u.port), timeout=timeout):
            pass
    except OSError as e:
        raise ProvisionError(
            f"broker unreachable: cannot connect to {u.host}:{u.port} from this machine "
            f"({e.strerror or e})",
            "start the broker (and 'iot-anchor run'), or give the right --broker URL",
        ) from None


def check_wifi(board: BoardTransport, timeout_s: int = 20) -> str:
    """Join the Wi-Fi from the board with the written config; its IP address."""
    out = board.exec(onboard.code("wifi", "join_wifi", CONFIG_PATH, timeout_s * 1000),
                     timeout=timeout_s + 30)
    ok, why, ip = ast.literal_eval(out.strip().splitlines()[-1])
    if not ok:
        hint = {
            "wrong_password": "check --wifi-password",
            "no_ap_found": "check --wifi (the SSID) and that the board is in range; "
                           "ESP32 and Pico W join 2.4 GHz networks only",
        }.get(why, "check --wifi and --wifi-password and that the access point is up")
        what = f"Wi-Fi failed: {why.replace('_', ' ')}" if why else "Wi-Fi failed"
        raise ProvisionError(f"{what} (network '{_ssid(board)}')", hint)
    return str(ip)


def _ssid(board: BoardTransport) -> str:
    """The Wi-Fi network in the board's config, or "?" when the board cannot say."""
    try:
        out = board.exec(onboard.code("config", "wifi_ssid", CONFIG_PATH))
        return out.strip().splitlines()[-1]
    except (ProvisionError, IndexError):
        return "?"


def check_broker_from_board(board: BoardTransport, url: str, timeout_s: int = 5) -> None:
    """ProvisionError unless the board can open a TCP connection to the broker at `url`."""
    u = parse_broker(url)
    out = board.exec(onboard.code("broker", "reach_broker", u.host, u.port, timeout_s),
                     timeout=timeout_s + 30).strip()
    if not out.endswith("ok"):
        raise ProvisionError(
            f"broker unreachable from the board: {u.host}:{u.port} "
            f"({out.removeprefix('fail ')})",
            "give --broker an address the board can reach on its network (not 127.0.0.1 or "
            "localhost), and check that the broker listens on that interface",
        )
