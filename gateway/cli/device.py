"""`iot-anchor device add|list|revoke|rotate`: the device registry (gateway/registry.py)."""

from __future__ import annotations

import argparse
import json

from gateway.cli import Subcommands, add_data_arg
from gateway.fleet import registry
from gateway.storage.store import Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("device", help="register, list, revoke or rotate devices",
                       description="The device registry. Every change is a ledger entry.")
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION")
    dsub.required = True
    from gateway.cli import provision  # `device provision`, with its own heavier imports


    a = dsub.add_parser("add", help="register a device and its public key")
    a.add_argument("id", metavar="ID", help="device id (as in the readings' dev/kid)")
    a.add_argument("--public-key", required=True, metavar="HEX|PEM-FILE",
                   help="P-256 public key: SEC1 point in hex (130 digits) or a PEM file")
    add_data_arg(a)
    a.set_defaults(func=_add)

    ls = dsub.add_parser("list", help="list registered devices")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_data_arg(ls)
    ls.set_defaults(func=_list)

    r = dsub.add_parser("revoke", help="revoke a device: its later readings are refused")
    r.add_argument("id", metavar="ID")
    add_data_arg(r)
    r.set_defaults(func=_revoke)

    ro = dsub.add_parser("rotate", help="give a device a new key (old readings stay verifiable)")
    ro.add_argument("id", metavar="ID")
    ro.add_argument("--public-key", required=True, metavar="HEX|PEM-FILE",
                    help="the new P-256 public key: hex SEC1 point or PEM file")
    add_data_arg(ro)
    ro.set_defaults(func=_rotate)
    provision.register_action(dsub)


def _print(change: registry.Change) -> int:
    print(f"device {change.dev}: {change.action} recorded as ledger entry {change.entry} "
          f"(key {change.key.hex()[:20]}...)")
    return 0


def _add(args: argparse.Namespace) -> int:
    key = registry.parse_public_key(args.public_key)
    with Store.open(args.data) as store:
        return _print(registry.add(store, registry.check_device_id(args.id), key))


def _revoke(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        return _print(registry.revoke(store, args.id))


def _rotate(args: argparse.Namespace) -> int:
    key = registry.parse_public_key(args.public_key)
    with Store.open(args.data) as store:
        return _print(registry.rotate(store, args.id, key))


def _list(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        rows = registry.listing(store)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no devices registered (add one with 'iot-anchor device add ID --public-key HEX')")
        return 0
    print(f"{'id':<24} {'status':<8} {'readings':>9} {'last_seq':>9}  key")
    for r in rows:
        last = "-" if r["last_seq"] is None else r["last_seq"]
        print(f"{r['id']:<24} {r['status']:<8} {r['readings']:>9} {last!s:>9}  "
              f"{r['key'][:24]}...")
    return 0
