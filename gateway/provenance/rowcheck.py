"""The per-row checks of `dataset verify` that run on the verifier pool's worker processes:
decode the COSE message, verify its ES256 signature (low-S) against the key that the registry
entries gave its device at the row's batch entry, hash it. Light on imports on purpose: a
worker imports this module, not pyarrow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.errors import AnchorError
from gateway.ledger import merkle
from gateway.ledger.entry import DeviceEntry
from gateway.wire.cose import Rejection, decode
from gateway.wire.es256 import PublicKey, check_signature, load_public_key

# dev -> [(key, from entry, until entry or None)]: a key checks readings of batch entries b
# with from < b < until
KeyHistory = dict[str, list[tuple[bytes, int, int | None]]]
Prepared = dict[str, list[tuple[PublicKey | None, int, int | None]]]
# per row: (leaf, problem or None, dev, seq, ts, data)
RowResult = tuple[bytes, str | None, str, int, int | None, dict[str, Any]]


def replay(entries: Sequence[DeviceEntry]) -> tuple[KeyHistory, list[str]]:
    """The key history from registry entries (in ledger order), and what is wrong in them."""
    hist: KeyHistory = {}
    problems: list[str] = []
    for e in entries:
        keys = hist.get(e.dev)
        current = keys[-1] if keys and keys[-1][2] is None else None
        if e.action == "add":
            if keys:
                problems.append(f"registry entry {e.i} adds {e.dev!r} a second time")
            hist.setdefault(e.dev, []).append((e.key, e.i, None))
        elif current is None or keys is None:
            problems.append(f"registry entry {e.i} ({e.action}) names {e.dev!r}, which has no "
                            "active key before it")
        else:
            keys[-1] = (current[0], current[1], e.i)
            if e.action == "rotate":
                keys.append((e.key, e.i, None))
    return hist, problems


def prepare(hist: KeyHistory) -> Prepared:
    out: Prepared = {}
    for dev, keys in hist.items():
        rows: list[tuple[PublicKey | None, int, int | None]] = []
        for kb, lo, hi in keys:
            try:
                pub: PublicKey | None = load_public_key(kb)
            except AnchorError:
                pub = None
            rows.append((pub, lo, hi))
        out[dev] = rows
    return out


def check_rows(keys: Prepared, chunk: Sequence[tuple[bytes, int]]) -> list[RowResult]:
    """Per (COSE bytes, batch entry): its leaf, a problem or None, and its decoded fields."""
    out: list[RowResult] = []
    for cose, entry in chunk:
        leaf = merkle.leaf_hash(cose)
        try:
            d = decode(cose, max(len(cose), 1))
        except Rejection as r:
            out.append((leaf, f"its COSE message does not decode ({r.reason})", "", -1, None,
                        {}))
            continue
        pub: PublicKey | None | str = "no registry entry gives the device a key at batch " \
            f"entry {entry}"
        for k, lo, hi in keys.get(d.dev, ()):
            if lo < entry and (hi is None or entry < hi):
                pub = k
                break
        if pub is None or isinstance(pub, str):
            out.append((leaf, f"{pub or 'its registered key is not a P-256 point'}",
                        d.dev, d.seq, d.ts, d.data))
            continue
        why = check_signature(pub, d.to_be_signed, d.signature)
        if why is not None:
            out.append((leaf, f"the signature does not verify ({why}) with the key the "
                        f"registry gave {d.dev!r} at batch entry {entry}", d.dev, d.seq, d.ts,
                        d.data))
            continue
        out.append((leaf, None, d.dev, d.seq, d.ts, d.data))
    return out
