"""A dataset's selection evaluated over the store: the export writes these rows, and the audit
(`ledger verify`) recomputes a dataset entry's rows and root from them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gateway.errors import IntegrityError
from gateway.ledger import merkle
from gateway.provenance.dataset import Selection
from gateway.storage.store import Store
from gateway.wire.cose import Decoded, Rejection, decode

READ_CHUNK = 4096


def decoded(cose: bytes, rid: int) -> Decoded:
    try:
        return decode(cose, max(len(cose), 1))
    except Rejection as r:
        raise IntegrityError(f"readings.id {rid} does not decode ({r.reason})",
                             "run 'iot-anchor ledger verify'") from None


def selected(store: Store, sel: Selection) -> Iterator[tuple[int, int, bytes, Decoded]]:
    """(id, batch entry, COSE, decoded) of the selection's readings, in (dev, seq) order."""
    for chunk in store.provenance_readings(sel.devices, sel.below, READ_CHUNK):
        for rid, _dev, _seq, batch, cose in chunk:
            d = decoded(cose, rid)
            if sel.holds(d.dev, d.ts, d.data, batch):
                yield rid, batch, cose, d


def dataset_root_of(store: Store, sel: Selection) -> tuple[int, bytes]:
    """(row count, dataset root) of a selection evaluated over the store."""
    tree = merkle.CompactRange()
    n = 0
    for _rid, _b, cose, _d in selected(store, sel):
        tree.append(merkle.leaf_hash(cose))
        n += 1
    return n, tree.root()


def selection_of(fields: dict[str, object]) -> Selection:
    """A worker's form of the selection sent to it (its ledger fields)."""
    return Selection.from_fields(fields)  # type: ignore[arg-type]


# (keep, dev, seq, ts, data, leaf) per reading: what the export's row pass needs
Decoded1 = tuple[bool, str, int, int | None, dict[str, int | float], bytes]


def decode_rows(sel: Selection, chunk: Sequence[tuple[bytes, int]]) -> list[Decoded1]:
    """Worker: each (COSE, batch entry) decoded, hashed and tested against the selection."""
    out: list[Decoded1] = []
    leaf_hash = merkle.leaf_hash
    for i, (cose, batch) in enumerate(chunk):
        d = decoded(cose, i)
        out.append((sel.holds(d.dev, d.ts, d.data, batch), d.dev, d.seq, d.ts, d.data,
                    leaf_hash(cose)))
    return out
