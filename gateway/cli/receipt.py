"""`iot-anchor receipt DEVICE SEQ` and `iot-anchor verify-receipt FILE --gateway-key VKEY`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.cli import Subcommands, add_data_arg
from gateway.errors import AnchorError, ConfigError
from gateway.ledger.receipt import build_receipt, parse_receipt, receipt_to_json, verify_receipt
from gateway.storage.store import Store


def register(sub: Subcommands) -> None:
    r = sub.add_parser("receipt", help="write the receipt of one anchored reading (JSON)",
                       description="Print, as JSON, the reading's COSE bytes, its inclusion "
                       "proof in its batch, the batch's ledger entry with its inclusion proof, "
                       "and the signed checkpoint. Check it with 'verify-receipt'.")
    r.add_argument("device", metavar="DEVICE")
    r.add_argument("seq", metavar="SEQ", type=int)
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
    add_data_arg(v)  # accepted for uniformity; not used (no database)
    v.set_defaults(func=_verify)


def _receipt(args: argparse.Namespace) -> int:
    with Store.open(args.data) as store:
        parts = store.receipt_parts(args.device, args.seq)
    if parts is None:
        raise ConfigError(f"device {args.device!r} seq {args.seq} is not anchored",
                          "see 'iot-anchor ledger status' for its seqs and gaps")
    sys.stdout.write(receipt_to_json(build_receipt(**parts)))
    return 0


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
        res = verify_receipt(parse_receipt(text), args.gateway_key, key)
    except AnchorError as e:
        print(f"FAIL: {e.explain()}")
        return 1
    sig = "device signature checked" if res.device_signature_checked else \
        "device signature not checked (no --device-key)"
    print(f"OK: {res.device} seq {res.seq} is in ledger entry {res.entry_index} of the "
          f"checkpoint of size {res.tree_size}; {sig}")
    return 0
