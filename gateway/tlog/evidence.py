"""Evidence of a log's misbehaviour, as a mirror saves it and as anyone checks it.

``DIR/evidence/<UTC time>-<kind>/``: ``old.checkpoint`` (the note the mirror held),
``new.checkpoint`` (the note the server served), ``evidence.json`` (``kind``, sizes, roots,
``detail``, and for a fork between different sizes the ``prefix_root`` and ``proof``). Kinds:

- ``fork``: two checkpoints signed by the gateway key that cannot both hold. Same size and
  different roots; or sizes m < n where a consistency proof (``proof``, RFC 6962) shows that
  the tree of the size-n checkpoint has ``prefix_root`` at size m, not the size-m checkpoint's
  root. Checkable by anyone with the gateway's vkey (`check_evidence`): a proof of misbehaviour.
- ``rollback``: the server served a checkpoint smaller than one it served before (of the same
  history). Both notes verify; the order in which they were served is the mirror's word.
- ``bad-data``: the server's tiles or entries do not hash to its own checkpoint. Both notes
  verify, but the bad data is not signed: a refusal, not a proof.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import AnchorError
from gateway.ledger import merkle, note


def write_evidence(data_dir: Path, kind: str, old: str, new: str, detail: str,
                   extra: dict[str, Any] | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = Path(data_dir) / "evidence"
    d = base / f"{stamp}-{kind}"
    k = 1
    while d.exists():
        k += 1
        d = base / f"{stamp}-{kind}-{k}"
    d.mkdir(parents=True)
    (d / "old.checkpoint").write_text(old)
    (d / "new.checkpoint").write_text(new)
    (d / "evidence.json").write_text(json.dumps({"kind": kind, "detail": detail,
                                                 **(extra or {})}, indent=2) + "\n")
    return d


def fork_extra(prefix_root: bytes, proof: Sequence[bytes]) -> dict[str, Any]:
    return {"prefix_root": prefix_root.hex(), "proof": [h.hex() for h in proof]}


def check_evidence(d: Path, vkey: str) -> str:
    """Check an evidence directory against the gateway vkey; returns what it proves.
    Raises AnchorError when it proves nothing."""
    try:
        old_t = (d / "old.checkpoint").read_text()
        new_t = (d / "new.checkpoint").read_text()
        info = json.loads((d / "evidence.json").read_text())
    except (OSError, ValueError) as e:
        raise AnchorError(f"{d} is not an evidence directory: {e}",
                          "give a directory under the mirror's evidence/") from None
    kind = info.get("kind")
    new = note.verify_checkpoint(new_t, vkey)
    if kind == "bad-data" and not old_t:  # a mirror that held nothing yet
        return f"bad data: {info.get('detail', '')} (the checkpoint is signed; the data is not)"
    old = note.verify_checkpoint(old_t, vkey)
    if kind == "fork":
        if old.size == new.size:
            if old.root == new.root:
                raise AnchorError("the two checkpoints are the same tree", "nothing is proven")
            return (f"fork: the gateway signed two different roots for size {old.size}")
        small, big = (old, new) if old.size < new.size else (new, old)
        try:
            prefix = bytes.fromhex(info["prefix_root"])
            proof = [bytes.fromhex(h) for h in info["proof"]]
        except (KeyError, TypeError, ValueError):
            raise AnchorError("the fork evidence has no valid prefix_root/proof",
                              "nothing is proven") from None
        merkle.verify_consistency(small.size, big.size, proof, prefix, big.root)
        if prefix == small.root:
            raise AnchorError("the proof shows the two checkpoints are consistent",
                              "nothing is proven")
        return (f"fork: the gateway's tree of size {big.size} has root {prefix.hex()} at size "
                f"{small.size}, but it also signed root {small.root.hex()} for that size")
    if kind == "rollback":
        if new.size >= old.size:
            raise AnchorError("the new checkpoint is not smaller", "nothing is proven")
        return (f"rollback: a checkpoint of size {new.size} was served after one of size "
                f"{old.size} (both signed by the gateway)")
    if kind == "bad-data":
        return f"bad data: {info.get('detail', '')} (both checkpoints signed; the data is not)"
    raise AnchorError(f"unknown evidence kind {kind!r}", "nothing is proven")
