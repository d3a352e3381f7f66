"""`iot-anchor downlink key`: the gateway's downlink public key, for devices."""

from __future__ import annotations

import argparse

from gateway.cli import Subcommands, add_data_arg


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "downlink", help="the authenticated downlink (acks and commands to devices)",
        description="The gateway seals every ack and command to a device with a MAC key "
                    "derived (ECDH) from its P-256 downlink key and the device's key; "
                    "docs/protocol.md, 'The downlink'.")
    dsub = p.add_subparsers(dest="downlink_command", required=True, metavar="COMMAND")
    k = dsub.add_parser(
        "key", help="print the downlink public key (130 hex digits) for devices",
        description="Print the gateway's downlink public key (DATA/downlink.key, made now if "
                    "the data directory has none yet): give it to each device, "
                    "`micropython firmware/main.py keygen --downlink-key HEX` or "
                    "`... trust --dir D --downlink-key HEX` (`device provision` does it).")
    add_data_arg(k)
    k.set_defaults(func=cmd_key)


def cmd_key(args: argparse.Namespace) -> int:
    from gateway.storage import downlink_keyfile
    from gateway.storage.store import Store

    Store.open(args.data).close()  # a data directory: the same error as every command
    print(downlink_keyfile.public_bytes(downlink_keyfile.load_or_create(args.data)).hex())
    return 0
