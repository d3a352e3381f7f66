"""C2SP tlog-proof (``c2sp.org/tlog-proof@v1``) for iot-anchor receipts.

    c2sp.org/tlog-proof@v1
    extra <base64 of the extra data>
    index <ledger entry index>
    <base64 inclusion-proof hash, leaf's sibling first>       (0 or more lines)
    <empty line>
    <the checkpoint note, with its signatures and cosignatures>

The log entry is the ledger entry (leaf = SHA-256(0x00 || its bytes)). The extra data is a
deterministic CBOR map that carries what a verifier needs to compute the leaf and to go down
to the reading: ``{"entry": the entry's bytes}`` for an entry receipt, and for a reading also
``"cose"`` (its COSE bytes), ``"index"`` and ``"size"`` (its position in the batch and the
batch size) and ``"proof"`` (its inclusion proof in the batch's tree, leaf to root). Nothing in
the extra data is trusted: the verifier recomputes the entry's leaf and checks every proof.
`to_receipt` turns a proof back into the JSON receipt form, which gateway.ledger.receipt
verifies.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import cbor2

from gateway.errors import ReceiptError
from gateway.ledger import note
from gateway.ledger.entry import EntryError, decode_entry
from gateway.ledger.receipt import payload_ident
from gateway.wire.cbor import encode as cbor_encode

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_TEXT = 256 * 1024
_HINT = "pass the file written by 'iot-anchor receipt --format tlog-proof'"


def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ReceiptError(f"tlog-proof {what} is not base64", _HINT) from None
    return raw


def from_receipt(receipt: Mapping[str, Any]) -> str:
    """A receipt dict (`build_receipt` / `build_entry_receipt`) as a tlog-proof text."""
    ent = receipt["entry"]
    extra: dict[str, Any] = {"entry": bytes.fromhex(ent["cbor"])}
    if "reading" in receipt:
        r = receipt["reading"]
        extra.update({"cose": bytes.fromhex(r["cose"]), "index": int(r["index"]),
                      "size": int(r["size"]), "proof": [bytes.fromhex(h) for h in r["proof"]]})
    lines = [HEADER, "extra " + base64.b64encode(cbor_encode(extra)).decode(),
             f"index {int(ent['index'])}"]
    lines += [base64.b64encode(bytes.fromhex(h)).decode() for h in ent["proof"]]
    return "\n".join(lines) + "\n\n" + str(receipt["checkpoint"])


def is_tlog_proof(text: str) -> bool:
    return text.startswith(HEADER + "\n")


def to_receipt(text: str) -> dict[str, Any]:
    """Parse a tlog-proof into the receipt dict form (strictly; ReceiptError otherwise)."""
    if len(text) > MAX_PROOF_TEXT:
        raise ReceiptError(f"the tlog-proof is longer than {MAX_PROOF_TEXT} characters", _HINT)
    head, sep, cp = text.partition("\n\n")
    if not sep:
        raise ReceiptError("the tlog-proof has no empty line before its checkpoint", _HINT)
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise ReceiptError(f"the first line is not {HEADER}", _HINT)
    k = 1
    extra_raw = None
    if len(lines) > k and lines[k].startswith("extra "):
        extra_raw = _b64(lines[k][6:], "extra line")
        k += 1
    if len(lines) <= k or not lines[k].startswith("index "):
        raise ReceiptError("the tlog-proof has no 'index N' line", _HINT)
    idx_s = lines[k][6:]
    if not idx_s.isascii() or not idx_s.isdigit() or (len(idx_s) > 1 and idx_s[0] == "0") \
            or len(idx_s) > 19:
        raise ReceiptError(f"tlog-proof index {idx_s[:24]!r} is not a decimal number", _HINT)
    proof = [_b64(ln, "proof line") for ln in lines[k + 1:]]
    if extra_raw is None:
        raise ReceiptError("the tlog-proof has no extra line: the ledger entry's bytes travel "
                           "there", _HINT)
    try:
        extra = cbor2.loads(extra_raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        raise ReceiptError("the tlog-proof's extra data is not CBOR", _HINT) from None
    if not isinstance(extra, dict) or not isinstance(extra.get("entry"), bytes):
        raise ReceiptError("the tlog-proof's extra data has no entry bytes", _HINT)
    text_part, _ = note.split_note(cp)
    size = note.parse_checkpoint(text_part).size
    receipt: dict[str, Any] = {
        "version": 1,
        "entry": {"cbor": extra["entry"].hex(), "index": int(idx_s), "size": size,
                  "proof": [h.hex() for h in proof]},
        "checkpoint": cp,
    }
    if "cose" in extra:
        try:
            r = {"cose": bytes(extra["cose"]).hex(), "index": int(extra["index"]),
                 "size": int(extra["size"]), "proof": [bytes(h).hex() for h in extra["proof"]]}
        except (KeyError, TypeError, ValueError):
            raise ReceiptError("the tlog-proof's extra reading part is malformed", _HINT) \
                from None
        dev, seq = payload_ident(bytes(extra["cose"]))
        receipt.update({"device": dev, "seq": seq, "reading": r})
    else:
        try:
            receipt["kind"] = decode_entry(extra["entry"]).kind
        except EntryError as e:
            raise ReceiptError(f"the tlog-proof's entry does not decode: {e.what}", _HINT) \
                from None
    return receipt
