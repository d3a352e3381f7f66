"""`iot-anchor ledger verify` and `iot-anchor ledger status [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.audit.store_audit import audit
from gateway.cli import Subcommands, add_data_arg
from gateway.errors import ConfigError
from gateway.ledger import merkle, note
from gateway.storage.store import VKEY_NAME, Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("ledger", help="audit the ledger or show its status")
    lsub = p.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True

    v = lsub.add_parser(
        "verify", help="audit everything in the database (exit 0: all holds, 1: broken)",
        description="Re-verify every reading's signature against the key registered at the "
        "time, recompute every batch root, the entry hash chain, the ledger tree and every "
        "checkpoint signature, and each device's seq/prev chain. Exit 0 when everything "
        "holds; otherwise exit 1 and name the first broken item (table, id, what differs).")
    v.add_argument("--gateway-key", metavar="VKEY",
                   help="the gateway's vkey to trust (default: DIR/gateway.vkey, which must "
                   "match the database's record)")
    v.add_argument("--workers", type=int, default=2,
                   help="verifier processes (default 2; 1 verifies in the main process)")
    v.add_argument("--all", action="store_true", help="list every problem found (up to 100)")
    v.add_argument("--checkpoint", metavar="FILE",
                   help="also check that the ledger extends this checkpoint saved earlier (a "
                        "signed note from /checkpoint or anchor/checkpoint, or a receipt or "
                        "tlog-proof holding one); a "
                        "rolled-back or rewritten ledger fails, naming the size")
    add_data_arg(v)
    v.set_defaults(func=_verify)

    pr = lsub.add_parser(
        "prove", help="print a consistency proof between two checkpoints of the ledger",
        description="Print the RFC 6962 consistency proof from the ledger tree of --from "
        "entries to that of --to (default: the latest checkpoint), with the signed checkpoint "
        "of --to, as the body of a C2SP tlog-witness add-checkpoint request: 'old N', the "
        "proof's hashes in base64 one per line, an empty line, the checkpoint note. Anyone "
        "holding a checkpoint of either size checks it against the other with the gateway's "
        "vkey alone ('dataset verify --checkpoint FILE --consistency PROOF').")
    pr.add_argument("--from", dest="old", metavar="N", type=int, required=True,
                    help="the smaller tree size (at least 1)")
    pr.add_argument("--to", dest="new", metavar="M", type=int,
                    help="the larger tree size, one with a stored checkpoint (default: the "
                    "latest checkpoint's)")
    add_data_arg(pr)
    pr.set_defaults(func=_prove)

    s = lsub.add_parser("status", help="counts, latest checkpoint, devices, gaps, rejections")
    s.add_argument("--json", action="store_true", help="print JSON")
    add_data_arg(s)
    s.set_defaults(func=_status)


def _trusted_vkey(store: Store, given: str | None) -> str:
    if given:
        note.parse_vkey(given)
        return given.strip()
    path = store.data_dir / VKEY_NAME
    try:
        vkey = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}",
                          "pass the gateway key with --gateway-key VKEY") from e
    note.parse_vkey(vkey)
    return vkey


def _verify(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        vkey = _trusted_vkey(store, args.gateway_key)
        recorded = store.meta("gateway_vkey")
        saved = _saved_checkpoint(args.checkpoint, vkey) if args.checkpoint else None
        res = audit(store, vkey, workers=args.workers)
        if saved is not None:
            problem = extends_checkpoint(store, saved)
            if problem:
                res.problems.insert(0, problem)
    if recorded != vkey:
        res.problems.insert(0, "meta gateway_vkey: differs from the trusted gateway key")
    if res.ok:
        rate = res.readings / res.seconds if res.seconds > 0 else 0.0
        print(f"ledger OK: {res.entries} entries, {res.readings} readings, "
              f"{res.checkpoints} checkpoints, {res.devices} devices verified in "
              f"{res.seconds:.2f} s ({rate:,.0f} readings/s)")
        return 0
    print(f"ledger BROKEN: {res.problems[0]}")
    if len(res.problems) > 1:
        if args.all:
            for p in res.problems[1:]:
                print(f"  also: {p}")
        else:
            print(f"  ({len(res.problems) - 1} more problem(s); --all lists them)")
    print("the database differs from what the gateway signed; restore it from a backup "
          "and compare", file=sys.stderr)
    return 1


def _prove(args: argparse.Namespace) -> int:
    from gateway.ledger.cosignature import format_add_checkpoint

    with Store.open(args.data, readonly=True) as store:
        latest = store.latest_checkpoint()
        if latest is None:
            raise ConfigError("the ledger has no checkpoint yet", "anchor something first")
        new = latest[0] if args.new is None else args.new
        text = store.checkpoint_note(new)
        if text is None:
            raise ConfigError(f"there is no stored checkpoint of size {new} (the latest has "
                              f"size {latest[0]})", "give --to a size with a checkpoint, or "
                              "leave --to out for the latest")
        if not 1 <= args.old <= new:
            raise ConfigError(f"--from {args.old} is not between 1 and --to {new}",
                              "give the smaller of the two tree sizes as --from")
        proof = store.consistency_proof(args.old, new)
    sys.stdout.write(format_add_checkpoint(args.old, proof, text).decode())
    return 0


def _saved_checkpoint(path: str, vkey: str) -> note.Checkpoint:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --checkpoint {path}: {e}",
                          "give the checkpoint note saved earlier") from e
    if text.startswith("c2sp.org/tlog-proof@v1\n"):  # a tlog-proof: its checkpoint
        text = text.split("\n\n", 1)[-1]
    elif text.lstrip().startswith("{"):  # a receipt: its checkpoint
        try:
            text = str(json.loads(text)["checkpoint"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--checkpoint {path} is JSON but not a receipt",
                              "give a checkpoint note or a receipt") from None
    try:
        return note.verify_checkpoint(text, vkey)
    except note.NoteError as e:
        raise ConfigError(f"--checkpoint {path} does not verify with the gateway key: {e.what}",
                          "give a checkpoint this gateway signed") from None


def extends_checkpoint(store: Store, cp: note.Checkpoint) -> str | None:
    """None if the stored entries give `cp`'s root at its size; else what differs."""
    n = store.entry_count()
    if n < cp.size:
        return (f"checkpoint file: the ledger has {n} entries, fewer than the saved checkpoint's "
                f"{cp.size}: it was rolled back to size {n}")
    got = ledger_root(store, cp.size)
    if got != cp.root:
        return (f"checkpoint file: the ledger's first {cp.size} entries give root {got.hex()}, "
                f"the saved checkpoint {cp.root.hex()}: the ledger diverges from it at size "
                f"{cp.size} (it was rewritten at or before entry {cp.size - 1})")
    return None


def ledger_root(store: Store, size: int) -> bytes:
    """The RFC 6962 root of the first `size` entries, recomputed from their bytes."""
    tree = merkle.CompactRange()
    lo = 0
    while lo < size:
        bodies = store.entry_bodies(lo, min(size, lo + 4096))
        if not bodies:
            break
        for b in bodies:
            tree.append(merkle.leaf_hash(b))
        lo += len(bodies)
    return tree.root()


def status(store: Store) -> dict[str, Any]:
    """The `ledger status --json` object."""
    cp = store.latest_checkpoint()
    gaps = store.gaps()
    devices: dict[str, Any] = {}
    for d in store.devices():
        devices[d.id] = {
            "readings": d.readings,
            "last_seq": d.last_seq,
            "gaps": gaps.get(d.id, []),
            "status": d.status,
            "upto": d.upto,
        }
    events = {k: int(n) for k, n in store.query(
        "SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")}
    return {
        "readings": store.reading_count(),
        "entries": store.entry_count(),
        "checkpoint": cp[1] if cp else None,
        "devices": devices,
        "rejected": store.rejected_counts(),
        "events": events,
        "gateway_key": store.vkey(),
        "mirror_of": store.meta("mirror_of"),
        "witnesses": store.witness_statuses(),
        "witness_quorum": store.meta("witness_quorum"),
    }


def _status(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        st = status(store)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"readings {st['readings']}, ledger entries {st['entries']}")
    print(f"gateway key {st['gateway_key']}")
    if st["mirror_of"]:
        print(f"a mirror of {st['mirror_of']}")
    for dev, d in st["devices"].items():
        gaps = ", ".join(f"{a}-{b}" for a, b in d["gaps"]) or "none"
        print(f"  {dev} ({d['status']}): {d['readings']} readings, last seq {d['last_seq']}, "
              f"gaps {gaps}")
    rej = st["rejected"]
    print("rejected: " + (", ".join(f"{k} {v}" for k, v in rej.items()) or "none"))
    if st["events"]:
        print("security events: " + ", ".join(f"{k} {v}" for k, v in st["events"].items()))
    if st["witnesses"]:
        cosigned = sorted((w["size"] for w in st["witnesses"]), reverse=True)
        q = int(st["witness_quorum"] or len(cosigned))
        print(f"witnesses: {len(cosigned)}, quorum {q}, witnessed up to size "
              f"{cosigned[q - 1] if q <= len(cosigned) else 0}")
        for w in st["witnesses"]:
            print(f"  {w['url']} ({w['witness'].split('+')[0]}): {w['state']}, cosigned size "
                  f"{w['size']}{', ' + w['detail'] if w['detail'] else ''}")
    print("checkpoint:")
    print(st["checkpoint"] or "(none yet)", end="" if st["checkpoint"] else "\n")
    return 0
