"""`iot-anchor device provision ID --port PORT|auto --wifi SSID --wifi-password PW --broker URL`.

The `device` command belongs to gateway/cli/device.py, which adds this action to it.
"""

from __future__ import annotations

import argparse
import os

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.fleet.provision import MpremoteBoard, Options, provision


def register_action(device_actions: Subcommands) -> None:
    """Add `provision` to the `device` command's actions (called by gateway.cli.device)."""
    p = device_actions.add_parser(
        "provision",
        help="flash the firmware to a board over USB, generate its key on the board, register it",
        description="Compile the firmware for the board's MicroPython, copy it with mpremote, "
        "write the config, generate the key on the board (re-provisioning keeps it unless "
        "--new-key), register the public key, reset the board and wait for its first signed "
        "reading.",
    )
    p.add_argument("id", metavar="ID", help="device id (the readings' dev/kid)")
    p.add_argument("--port", default=os.environ.get("IOT_ANCHOR_PORT", "auto"),
                   help="serial port of the board, or 'auto' for the first USB serial port "
                   "(default: $IOT_ANCHOR_PORT, else auto)")
    p.add_argument("--wifi", required=True, metavar="SSID", help="Wi-Fi network (2.4 GHz)")
    p.add_argument("--wifi-password", default=os.environ.get("IOT_ANCHOR_WIFI_PASSWORD", ""),
                   metavar="PASSWORD", help="Wi-Fi password (default: $IOT_ANCHOR_WIFI_PASSWORD)")
    p.add_argument("--broker", default=os.environ.get("IOT_ANCHOR_BROKER"), metavar="URL",
                   help="MQTT broker as the board reaches it, mqtt://HOST:PORT "
                   "(default: $IOT_ANCHOR_BROKER)")
    p.add_argument("--new-key", action="store_true",
                   help="replace the board's key with a new one (and rotate it at the gateway)")
    p.add_argument("--interval", type=float, default=60, metavar="S",
                   help="seconds between readings (default 60)")
    p.add_argument("--sensors", default="mcu", metavar="LIST",
                   help="comma-separated: mcu (the chip's own sensor), bme280 (default: mcu)")
    p.add_argument("--wait", type=float, default=120, metavar="S",
                   help="seconds to wait for the first reading after the reset (default 120)")
    add_data_arg(p)
    p.set_defaults(func=_provision)


def _provision(args: argparse.Namespace) -> int:
    if not args.broker:
        raise ConfigError("--broker is required (or set $IOT_ANCHOR_BROKER)",
                          "give the broker as the board will reach it, e.g. "
                          "--broker mqtt://192.168.1.10:1883")
    if args.interval <= 0:
        raise ConfigError("--interval must be > 0 seconds", "e.g. --interval 60")
    opts = Options(dev_id=args.id, wifi_ssid=args.wifi, wifi_password=args.wifi_password,
                   broker=args.broker, data=args.data, new_key=args.new_key,
                   interval=args.interval,
                   sensors=[s.strip() for s in args.sensors.split(",") if s.strip()],
                   wait=args.wait)
    with MpremoteBoard.find(args.port) as board:
        result = provision(board, opts)
    print(f"device {args.id} provisioned: first reading seq {result.first_seq} arrived signed")
    return 0
