"""`iot-anchor init`: create the data directory, the database and the gateway key."""

from __future__ import annotations

import argparse

from gateway.cli import Subcommands, add_data_arg
from gateway.storage import downlink_keyfile
from gateway.storage.store import KEY_NAME, Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "init",
        help="create the data directory, database and gateway signing key",
        description="Create DIR (refusing an existing non-empty one), the ledger (SQLite in DIR, "
        "or the empty PostgreSQL database named by --store), the gateway's Ed25519 key and its "
        "P-256 downlink key (both mode 0600). It prints the downlink public key (give it to "
        "devices: keygen --downlink-key; `iot-anchor downlink key` prints it again) and, on the "
        "last line, the gateway's public key in C2SP vkey form: give it to whoever verifies "
        "receipts or audits the ledger.",
    )
    add_data_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store, vkey = Store.create(args.data, args.store)
    store.close()
    db = store.path.name if store.engine == "sqlite" else store.location
    dkey = downlink_keyfile.create(store.data_dir)
    print(f"created {store.data_dir} (database {db}, keys {KEY_NAME} and "
          f"{downlink_keyfile.DOWNLINK_KEY_NAME}, mode 0600)")
    print(f"downlink key (for devices): {downlink_keyfile.public_bytes(dkey).hex()}")
    print("gateway public key (vkey):")
    print(vkey)
    return 0
