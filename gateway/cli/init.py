"""`iot-anchor init`: create the data directory, the database and the gateway key."""

from __future__ import annotations

import argparse

from gateway.cli import Subcommands, add_data_arg
from gateway.storage.store import KEY_NAME, Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "init",
        help="create the data directory, database and gateway signing key",
        description="Create DIR (refusing an existing non-empty one), the ledger (SQLite in DIR, "
        "or the empty PostgreSQL database named by --store) and the gateway's Ed25519 key "
        "(mode 0600). The last line printed is the gateway's public key "
        "in C2SP vkey form: give it to whoever verifies receipts or audits the ledger.",
    )
    add_data_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    store, vkey = Store.create(args.data, args.store)
    store.close()
    db = store.path.name if store.engine == "sqlite" else store.location
    print(f"created {store.data_dir} (database {db}, key {KEY_NAME}, mode 0600)")
    print("gateway public key (vkey):")
    print(vkey)
    return 0
