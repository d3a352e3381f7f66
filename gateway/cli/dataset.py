"""`iot-anchor dataset export OUT ...` and `iot-anchor dataset verify OUT --gateway-key VKEY`
(gateway/provenance/export.py and verify.py; docs/provenance.md)."""

from __future__ import annotations

import argparse
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import AnchorError, ConfigError
from gateway.ledger import note
from gateway.storage.store import Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("dataset", help="export anchored readings as a verifiable dataset; "
                       "verify one offline")
    dsub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND")
    dsub.required = True

    e = dsub.add_parser(
        "export", help="write the selected anchored readings as a dataset and anchor it",
        usage="iot-anchor dataset export OUT --name NAME [--device ID]... [--since T] "
              "[--until T] [--sensor S]... [--json] [--data DIR]",
        description="Write OUT/data/readings.parquet (one row per anchored reading, in "
        "(device, seq) order), OUT/provenance/ (the readings' COSE messages, their shared "
        "batch proofs, the batch and registry entries with their ledger proofs, one signed "
        "checkpoint) and OUT/croissant.json (Croissant 1.1 metadata), and append a ledger "
        "entry of kind 'dataset' for it. OUT must be new or empty. T is ISO 8601 (UTC when it "
        "has no offset) or unix seconds; the range is since <= ts < until.")
    e.add_argument("out", metavar="OUT", help="the dataset directory to write")
    e.add_argument("--name", required=True, help="the dataset's name")
    e.add_argument("--device", action="append", default=[], metavar="ID",
                   help="only this device's readings (repeatable; default: all devices)")
    e.add_argument("--since", metavar="T", help="only readings with ts >= T")
    e.add_argument("--until", metavar="T", help="only readings with ts < T")
    e.add_argument("--sensor", action="append", default=[], metavar="S",
                   help="only these sensor columns, and readings that have one of them "
                   "(repeatable; default: every sensor)")
    e.add_argument("--description", help="the dataset's description in croissant.json")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_data_arg(e)
    e.set_defaults(func=_export)

    v = dsub.add_parser(
        "verify", help="check an exported dataset offline (exit 0 holds, 1 does not)",
        usage="iot-anchor dataset verify OUT --gateway-key VKEY [--checkpoint FILE "
              "[--consistency PROOF]]",
        description="With no database and no network: every file's sha256 against "
        "croissant.json, every row against its COSE message, every signature against the key "
        "its device had, every reading, batch, registry and dataset entry proven under a "
        "checkpoint signed by VKEY (equal to FILE's when given, or consistent with it by "
        "PROOF when their sizes differ), and the root over the "
        "rows against the anchored one. Exit 0 when all hold, else 1 naming the first "
        "failure.")
    v.add_argument("out", metavar="OUT", help="the dataset directory")
    v.add_argument("--gateway-key", required=True, metavar="VKEY",
                   help="the gateway's vkey (the line 'init' printed), or a file holding it")
    v.add_argument("--checkpoint", metavar="FILE",
                   help="a checkpoint note you trust (e.g. the one published after the "
                   "export, or a later witnessed one); the provenance's must be consistent "
                   "with it")
    v.add_argument("--consistency", metavar="PROOF",
                   help="when FILE's size is not the provenance's: the consistency proof "
                   "between the two ('iot-anchor ledger prove --from SMALLER --to LARGER' on "
                   "any copy of the log); it is checked, not trusted")
    v.add_argument("--workers", type=int, default=2,
                   help="verifier processes (default 2; 1 verifies in the main process)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_arg(v)  # accepted for uniformity; not used (no database)
    v.set_defaults(func=_verify)


_UNIX = re.compile(r"\d+(\.\d+)?")


def parse_time(text: str, option: str) -> int:
    """ISO 8601 (UTC without an offset) or unix seconds -> whole unix seconds (rounded up:
    the bounds compare with whole-second device clocks)."""
    t = text.strip()
    if _UNIX.fullmatch(t):
        return math.ceil(float(t))
    try:
        dt = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is neither ISO 8601 nor unix seconds",
                          "e.g. 2025-01-31T00:00:00Z or 1738281600") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return math.ceil(dt.timestamp())


def trusted_vkey(value: str) -> str:
    """A vkey given on the command line, or read from the file it names."""
    text = value.strip()
    try:
        note.parse_vkey(text)
        return text
    except AnchorError:
        pass
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the gateway key file {path} ({e})",
                              "pass the vkey line itself") from None
    note.parse_vkey(text)
    return text


def _export(args: argparse.Namespace) -> int:
    from gateway.provenance.export import export

    since = None if args.since is None else parse_time(args.since, "--since")
    until = None if args.until is None else parse_time(args.until, "--until")
    out = Path(args.out)
    with Store.open(args.data) as store:
        res = export(store, out, args.name, devices=args.device, sensors=args.sensor,
                     since=since, until=until, description=args.description)
    if args.json:
        print(json.dumps(res.as_json()))
    else:
        rate = res.rows / res.seconds if res.seconds else 0.0
        print(f"exported {res.rows} rows as dataset {res.name!r} to {out}: ledger entry "
              f"{res.entry}, root {res.root.hex()} ({res.seconds:.2f} s, {rate:,.0f} rows/s)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gateway.provenance.verify import verify_dataset

    if args.consistency and not args.checkpoint:
        raise ConfigError("--consistency needs --checkpoint FILE",
                          "give the checkpoint you trust with --checkpoint")
    try:
        vkey = trusted_vkey(args.gateway_key)
        res = verify_dataset(Path(args.out), vkey, args.checkpoint,
                             consistency=args.consistency, workers=args.workers)
    except AnchorError as e:
        if args.json:
            print(json.dumps({"ok": False, "failure": e.explain()}))
        else:
            print(f"FAIL: {e.explain()}")
        return 1
    if args.json:
        print(json.dumps({"ok": True, "name": res.name, "rows": res.rows, "entry": res.entry,
                          "root": res.root.hex(), "tree_size": res.tree_size}))
    else:
        print(f"OK: dataset {res.name!r}, {res.rows} rows, dataset entry {res.entry}, root "
              f"{res.root.hex()}, proven under the checkpoint of size {res.tree_size} "
              f"({res.seconds:.2f} s)")
    return 0
