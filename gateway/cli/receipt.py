"""`iot-anchor receipt DEVICE SEQ` and `iot-anchor verify-receipt FILE --gateway-key VKEY`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import AnchorError, ConfigError
from gateway.ledger.cosignature import check_quorum
from gateway.ledger.receipt import (
    build_entry_receipt,
    build_receipt,
    parse_receipt,
    receipt_to_json,
    verify_entry_receipt,
    verify_receipt,
)
from gateway.ledger.tlog_proof import from_receipt, is_tlog_proof, to_receipt
from gateway.storage.store import Store


def register(sub: Subcommands) -> None:
    r = sub.add_parser("receipt", help="write the receipt of an anchored reading or of a "
                       "ledger entry (JSON)",
                       usage="iot-anchor receipt DEVICE SEQ | --entry N [--data DIR]",
                       description="Print, as JSON, the reading's COSE bytes, its inclusion "
                       "proof in its batch, the batch's ledger entry with its inclusion proof, "
                       "and the signed checkpoint; with --entry N, ledger entry N (any kind) "
                       "with its inclusion proof and the checkpoint. Check it with "
                       "'verify-receipt'.")
    r.add_argument("device", metavar="DEVICE", nargs="?")
    r.add_argument("seq", metavar="SEQ", type=int, nargs="?")
    r.add_argument("--entry", metavar="N", type=int,
                   help="the receipt of ledger entry N instead of a reading")
    r.add_argument("--format", choices=("json", "tlog-proof"), default="json",
                   help="json (default), or tlog-proof: a C2SP tlog-proof "
                        "(c2sp.org/tlog-proof@v1) of the ledger entry, the reading's proof in "
                        "its batch in the extra line (docs/tlog.md); verify-receipt reads both")
    add_data_arg(r)
    r.set_defaults(func=_receipt)

    v = sub.add_parser("verify-receipt", help="check a receipt offline (exit 0 or 1)",
                       description="Check a receipt with no database: the checkpoint signature, "
                       "both inclusion proofs, the message, and the device signature when "
                       "--device-key is given. Prints one line; exit 0 if it holds, else 1.")
    v.add_argument("file", metavar="FILE", help="receipt JSON file, or - for stdin")
    v.add_argument("--gateway-key", required=True, metavar="VKEY",
                   help="the gateway's public key (vkey line printed by 'init')")
    v.add_argument("--device-key", metavar="HEX",
                   help="the device's P-256 public key (130 hex) to check its signature too")
    v.add_argument("--witness-key", metavar="VKEY", nargs="+", default=[],
                   help="witness vkeys (from 'iot-anchor witness init'): the receipt's "
                        "checkpoint must carry valid cosignatures by --witness-quorum of them")
    v.add_argument("--witness-quorum", metavar="K", type=int,
                   help="cosignatures required (default: all the --witness-key given)")
    add_data_arg(v)  # accepted for uniformity; not used (no database)
    v.set_defaults(func=_verify)


def _receipt(args: argparse.Namespace) -> int:
    if args.entry is not None:
        if args.device is not None:
            raise ConfigError("give either DEVICE SEQ or --entry N, not both",
                              "e.g. 'iot-anchor receipt dev1 0' or 'iot-anchor receipt --entry 3'")
        if args.entry < 0:
            raise ConfigError(f"--entry {args.entry} is negative", "give a ledger index >= 0")
        with Store.open(args.data) as store:
            eparts = store.entry_receipt_parts(args.entry)
            size = store.entry_count()
        if eparts is None:
            raise ConfigError(f"the ledger has no entry {args.entry} (it has {size})",
                              "see 'iot-anchor ledger status'")
        _write(build_entry_receipt(**store_best(args.data, eparts)), args.format)
        return 0
    if args.device is None or args.seq is None:
        raise ConfigError("receipt needs DEVICE SEQ (a reading) or --entry N (a ledger entry)",
                          "e.g. 'iot-anchor receipt dev1 0'")
    with Store.open(args.data) as store:
        parts = store.receipt_parts(args.device, args.seq)
        if parts is not None:
            parts = store.with_best_checkpoint(parts)
    if parts is None:
        raise ConfigError(f"device {args.device!r} seq {args.seq} is not anchored",
                          "see 'iot-anchor ledger status' for its seqs and gaps")
    _write(build_receipt(**parts), args.format)
    return 0


def store_best(data: str, parts: dict[str, Any]) -> dict[str, Any]:
    """Receipt parts on the checkpoint with the most witness cosignatures (Store's rule)."""
    with Store.open(data) as store:
        return store.with_best_checkpoint(parts)


def _write(receipt: dict[str, Any], fmt: str) -> None:
    sys.stdout.write(from_receipt(receipt) if fmt == "tlog-proof" else receipt_to_json(receipt))


def _verify(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as e:
        print(f"FAIL: cannot read {args.file}: {e.strerror or e}; check the path (or pass - to "
              "read the receipt from stdin)")
        return 1
    except UnicodeDecodeError:
        print(f"FAIL: {args.file} is not text (not UTF-8); pass the JSON file written by "
              "'iot-anchor receipt DEVICE SEQ'")
        return 1
    try:
        key = None
        if args.device_key:
            try:
                key = bytes.fromhex(args.device_key.strip())
            except ValueError:
                raise ConfigError("--device-key is not hex", "pass 130 hex digits") from None
        receipt = to_receipt(text) if is_tlog_proof(text) else parse_receipt(text)
        witnessed = ""
        if args.witness_key or args.witness_quorum is not None:
            if not args.witness_key:
                raise ConfigError("--witness-quorum needs --witness-key VKEY...",
                                  "give the witness keys to count")
            cp_text = receipt.get("checkpoint")
            if not isinstance(cp_text, str):
                raise ConfigError("the receipt has no checkpoint", "pass a whole receipt")
            signers = check_quorum(cp_text, args.witness_key, args.witness_quorum)
            witnessed = f"; cosigned by {len(signers)} of {len(args.witness_key)} witness(es)"
        if "reading" not in receipt:
            if key is not None:
                raise ConfigError("--device-key is for the receipt of a reading; this one is "
                                  "the receipt of a ledger entry", "leave --device-key out")
            got = verify_entry_receipt(receipt, args.gateway_key)
            print(f"OK: ledger entry {got.entry.i} ({got.entry.kind}) is in the checkpoint of "
                  f"size {got.tree_size}{witnessed}")
            return 0
        res = verify_receipt(receipt, args.gateway_key, key)
    except AnchorError as e:
        print(f"FAIL: {e.explain()}")
        return 1
    sig = "device signature checked" if res.device_signature_checked else \
        "device signature not checked (no --device-key)"
    print(f"OK: {res.device} seq {res.seq} is in ledger entry {res.entry_index} of the "
          f"checkpoint of size {res.tree_size}; {sig}{witnessed}")
    return 0
