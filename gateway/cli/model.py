"""`iot-anchor model register / verify / history / who` (gateway/provenance/model.py;
docs/provenance.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.cli.dataset import trusted_vkey
from gateway.errors import AnchorError
from gateway.provenance import model
from gateway.storage.store import Store


def register(sub: Subcommands) -> None:
    p = sub.add_parser("model", help="anchor a model's fingerprint; verify it; its history "
                       "and owner")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    msub.required = True

    r = msub.add_parser(
        "register", help="anchor a model version's fingerprint (a ledger entry)",
        usage="iot-anchor model register PATH --name NAME --version VER "
              "[--dataset OUT|ENTRY]... [--owner-key KEYFILE] [--out FILE] [--data DIR]",
        description="Compute the manifest of PATH (a file, or a directory: every file's "
        "relative path and SHA-256; symlinks are refused) as an OpenSSF model signing "
        "statement, append a 'model' ledger entry (name, version, digest, the name's previous "
        "version as parent, the datasets, the owner's key), and write NAME-VER.provenance.json "
        "(or --out): the statement, the owner's signature, the entry's receipt. With "
        "--owner-key the signature also goes to the same name with the suffix .sig, which "
        "'model_signing verify key' accepts.")
    r.add_argument("path", metavar="PATH", help="the model file or directory")
    r.add_argument("--name", required=True)
    r.add_argument("--version", required=True, metavar="VER")
    r.add_argument("--dataset", action="append", default=[], metavar="OUT|ENTRY",
                   help="a dataset it was trained on: its exported directory or its ledger "
                   "entry (repeatable)")
    r.add_argument("--owner-key", metavar="KEYFILE", type=Path,
                   help="the owner's P-256 private key (PEM) to sign the statement")
    r.add_argument("--out", metavar="FILE", type=Path,
                   help="the provenance file (default NAME-VER.provenance.json)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_arg(r)
    r.set_defaults(func=_register)

    v = msub.add_parser(
        "verify", help="check a model against its provenance file offline (exit 0 or 1)",
        usage="iot-anchor model verify PATH --provenance FILE --gateway-key VKEY",
        description="With no database: the receipt proves the model entry under a checkpoint "
        "signed by VKEY, the statement is the anchored one (and the owner's signature holds "
        "when an owner is recorded), and PATH's files match the manifest. Exit 0 when all "
        "hold, else 1 naming the file that differs, is missing or is extra.")
    v.add_argument("path", metavar="PATH")
    v.add_argument("--provenance", required=True, metavar="FILE", type=Path)
    v.add_argument("--gateway-key", required=True, metavar="VKEY",
                   help="the gateway's vkey, or a file holding it")
    add_data_arg(v)  # accepted for uniformity; not used (no database)
    v.set_defaults(func=_verify)

    h = msub.add_parser("history", help="a model's versions, oldest first",
                        usage="iot-anchor model history NAME [--json] [--data DIR]")
    h.add_argument("name", metavar="NAME")
    h.add_argument("--json", action="store_true", help="print a JSON list")
    add_data_arg(h)
    h.set_defaults(func=_history)

    w = msub.add_parser("who", help="which name and version first registered a fingerprint",
                        usage="iot-anchor model who PATH|DIGEST [--json] [--data DIR]")
    w.add_argument("ref", metavar="PATH|DIGEST")
    w.add_argument("--json", action="store_true", help="print JSON")
    add_data_arg(w)
    w.set_defaults(func=_who)


def _register(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        res = model.register(store, Path(args.path), args.name, args.version, args.dataset,
                             args.owner_key, args.out)
    if args.json:
        print(json.dumps({"entry": res.entry, "digest": res.digest.hex(), "parent": res.parent,
                          "provenance": str(res.provenance),
                          "signature": str(res.signature) if res.signature else None}))
        return 0
    parent = f", parent {res.parent}" if res.parent else ""
    signed = f"; owner signature in {res.signature}" if res.signature else ""
    print(f"registered {args.name} {args.version}: ledger entry {res.entry}, digest "
          f"{res.digest.hex()}{parent}; provenance in {res.provenance}{signed}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        vkey = trusted_vkey(args.gateway_key)
        res = model.verify_model(Path(args.path), args.provenance, vkey)
    except AnchorError as e:
        print(f"FAIL: {e.explain()}")
        return 1
    owner = "owner signature checked" if res.owner_checked else "no owner recorded"
    print(f"OK: {res.name} {res.version} ({res.files} files, digest {res.digest.hex()}) is "
          f"ledger entry {res.entry} under the checkpoint of size {res.tree_size}; {owner}")
    return 0


def _history(args: argparse.Namespace) -> int:
    with Store.open(args.data, readonly=True) as store:
        rows = model.history(store, args.name)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        ds = ", ".join(f"{d['name']} (entry {d['entry']}, {d['rows']} rows)"
                       for d in r["datasets"]) or "none"
        print(f"{r['version']}  {r['time']}  entry {r['entry']}  digest {r['digest']}")
        print(f"    parent {r['parent'] or '-'}; datasets {ds}; owner {r['owner'] or '-'}")
    return 0


def _who(args: argparse.Namespace) -> int:
    with Store.open(args.data, readonly=True) as store:
        res = model.who(store, args.ref)
    if res is None:
        if args.json:
            print(json.dumps(None))
        else:
            print(f"not registered: no model entry has the fingerprint of {args.ref}")
        return 1
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['name']} {res['version']} first registered digest {res['digest']} at "
          f"{res['time']} (ledger entry {res['entry']}; owner {res['owner'] or '-'})")
    for r in res["later"]:
        print(f"    also registered later as {r['name']} {r['version']} at {r['time']} "
              f"(entry {r['entry']})")
    return 0
