"""`iot-anchor store copy --from URL --to URL` and `iot-anchor store group`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.audit.store_audit import audit
from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError, IntegrityError
from gateway.ledger import note
from gateway.service.runner import SHARED_GROUP
from gateway.storage.copy import copy_rows, create_empty
from gateway.storage.location import parse_store
from gateway.storage.store import VKEY_NAME, Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("store", help="copy a ledger between stores; the shared group")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True
    c = ssub.add_parser(
        "copy", help="copy a ledger into a new store (SQLite <-> PostgreSQL), verified",
        description="Copy every table of the store --from (one consistent snapshot) into the "
        "new, empty store --to (a new SQLite file or an empty PostgreSQL database), in one "
        "transaction; then verify the arrival: the same rows per table, the same latest "
        "checkpoint, and the full audit of 'ledger verify' against the gateway key. Exit 0 "
        "when the copy holds, 1 when its audit fails.")
    c.add_argument("--from", dest="src", metavar="URL", required=True,
                   help="the store to copy: postgresql://..., or sqlite:PATH (a file, or a "
                        "data directory's ledger.db)")
    c.add_argument("--to", dest="dst", metavar="URL", required=True,
                   help="the new store: postgresql://... (an empty database) or sqlite:PATH "
                        "(a new file)")
    c.add_argument("--gateway-key", metavar="VKEY",
                   help="the gateway's vkey to verify against (default: DIR/gateway.vkey, "
                        "else the source's record of it)")
    c.add_argument("--workers", type=int, default=2, help="verifier processes (default 2)")
    add_data_arg(c)
    c.set_defaults(func=_copy)
    g = ssub.add_parser(
        "group", help="show or change the ledger's shared-subscription group",
        description="The group recorded by the first 'run --shared GROUP' (gateways of another "
        "group are refused). --set NAME or --clear changes it: stop the group's gateways "
        "first.")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--set", metavar="GROUP", help="record GROUP")
    how.add_argument("--clear", action="store_true", help="forget the recorded group")
    add_data_arg(g)
    g.set_defaults(func=_group)


def _trusted(data: Path, given: str | None, recorded: str) -> tuple[str, str]:
    if given:
        note.parse_vkey(given)
        return given.strip(), "--gateway-key"
    path = data / VKEY_NAME
    if path.is_file():
        vkey = path.read_text().strip()
        note.parse_vkey(vkey)
        return vkey, str(path)
    return recorded, "the source's own record (pass --gateway-key to check against yours)"


def _copy(args: argparse.Namespace) -> int:
    data = Path(args.data)
    src_at, dst_at = parse_store(args.src, data), parse_store(args.dst, data)
    if src_at.shown == dst_at.shown:
        raise ConfigError("--from and --to name the same store", "give a new store as --to")
    with Store.open(data, readonly=True, store=args.src) as src:
        vkey, source_of_key = _trusted(data, args.gateway_key, src.vkey())
        if src.vkey() != vkey:
            raise ConfigError(f"the source {src.location} was signed by another gateway key "
                              f"than {source_of_key}", "check --from and --gateway-key")
        with create_empty(data, dst_at) as dst:
            counts = copy_rows(src, dst)
            src_cp = src.latest_checkpoint()
            got = {t: int(dst.one(f"SELECT COUNT(*) FROM {t}")[0]) for t in counts}
            if got != counts:
                bad = next(t for t in counts if got[t] != counts[t])
                raise IntegrityError(f"{dst.location} table {bad} has {got[bad]} rows after "
                                     f"the copy, the source {counts[bad]}",
                                     "the copy is not usable: drop it and copy again")
            if dst.latest_checkpoint() != src_cp:
                raise IntegrityError(f"{dst.location}'s latest checkpoint differs from the "
                                     "source's", "the copy is not usable: drop it and copy again")
            res = audit(dst, vkey, workers=args.workers)
    total = sum(counts.values())
    if not res.ok:
        print(f"copy BROKEN: {res.problems[0]} (the copy of {total} rows into {dst_at.shown} "
              "does not verify: drop it, then run 'iot-anchor ledger verify' on the source)")
        return 1
    size = src_cp[0] if src_cp else 0
    print(f"copied {src_at.shown} -> {dst_at.shown}: {total} rows in {len(counts)} tables "
          f"({counts.get('readings', 0)} readings, {counts.get('entries', 0)} entries); "
          f"verified: the same rows and checkpoint (size {size}), ledger OK against "
          f"{source_of_key} in {res.seconds:.2f} s")
    return 0


def _group(args: argparse.Namespace) -> int:
    if args.set is not None and not SHARED_GROUP.fullmatch(args.set):
        raise ConfigError(f"--set {args.set!r} is not a group name",
                          "give 1-64 characters from A-Z a-z 0-9 . _ -")
    with Store.open(args.data) as store:
        if args.set is not None:
            store.set_shared_group(args.set)
        elif args.clear:
            store.set_shared_group(None)
        group = store.meta("shared_group")
    print(f"shared group: {group}" if group else "shared group: none recorded")
    return 0
