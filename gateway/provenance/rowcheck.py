"""The per-row checks of `dataset verify` that run on the verifier pool's worker processes:
decode the COSE message, verify its ES256 signature (low-S) against the key that the registry
entries gave its device at the row's batch entry, hash it. Light on imports on purpose: a
worker imports this module, not pyarrow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import AnchorError
from gateway.ledger import merkle
from gateway.ledger.entry import DeviceEntry
from gateway.provenance.dataset import Selection
from gateway.wire.cose import Rejection, decode
from gateway.wire.es256 import PublicKey, check_signature, load_public_key

# dev -> [(key, from entry, until entry or None)]: a key checks readings of batch entries b
# with from < b < until
KeyHistory = dict[str, list[tuple[bytes, int, int | None]]]
Prepared = dict[str, list[tuple[PublicKey | None, int, int | None]]]


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


@dataclass(frozen=True)
class RowContext:
    """What a worker needs to check rows: the device keys, the sensor columns, the
    selection."""

    keys: Prepared
    sensors: tuple[str, ...]
    selection: Selection


def prepare_rows(value: tuple[KeyHistory, list[str], dict[str, Any]]) -> RowContext:
    hist, sensors, sel = value
    return RowContext(prepare(hist), tuple(sensors), Selection.from_fields(sel))


# a row as read from the Parquet file: (device, seq, ts in ms or None, *sensors, leaf, entry)
Row = tuple[Any, ...]


def check_rows(ctx: RowContext, chunk: Sequence[tuple[bytes, Row]]
               ) -> list[tuple[bytes, str | None]]:
    """Per (COSE bytes, row): the message's leaf hash, and what is wrong with the row against
    its message (None when it equals the payload, the signature verifies with the key its
    device had at the row's batch entry, and the selection holds it)."""
    return [_check(ctx, cose, row) for cose, row in chunk]


def _check(ctx: RowContext, cose: bytes, row: Row) -> tuple[bytes, str | None]:
    leaf = merkle.leaf_hash(cose)
    try:
        d = decode(cose, max(len(cose), 1))
    except Rejection as r:
        return leaf, f"its COSE message does not decode ({r.reason})"
    dev, seq, ts_ms, entry = row[0], row[1], row[2], row[-1]
    if type(entry) is not int:
        return leaf, f"entry is {entry!r}, not a ledger index"
    pub: PublicKey | None | str = f"no registry entry gives the device a key at batch " \
        f"entry {entry}"
    for k, lo, hi in ctx.keys.get(d.dev, ()):
        if lo < entry and (hi is None or entry < hi):
            pub = k
            break
    if pub is None or isinstance(pub, str):
        return leaf, pub or "its registered key is not a P-256 point"
    why = check_signature(pub, d.to_be_signed, d.signature)
    if why is not None:
        return leaf, (f"the signature does not verify ({why}) with the key the registry gave "
                      f"{d.dev!r} at batch entry {entry}")
    if (dev, seq) != (d.dev, d.seq):
        return leaf, (f"device, seq are ({dev!r}, {seq}), its COSE message says "
                      f"({d.dev!r}, {d.seq})")
    if ts_ms != (None if d.ts is None else d.ts * 1000):
        shown = "null" if ts_ms is None else f"{ts_ms / 1000:g} s"
        return leaf, f"ts is {shown}, its COSE message says " + \
            ("no ts" if d.ts is None else f"{d.ts} s")
    data = d.data
    for j, s in enumerate(ctx.sensors):
        v = row[3 + j]
        want = data.get(s)
        if v != (None if want is None else float(want)):
            return leaf, f"{s} is {v}, its COSE message says {want}"
    if not ctx.selection.sensors:
        extra = sorted(set(data) - set(ctx.sensors))
        if extra:
            return leaf, f"its COSE message has sensor(s) {extra} with no column"
    if row[-2] != leaf:
        shown = row[-2].hex() if isinstance(row[-2], bytes) else row[-2]
        return leaf, f"leaf is {shown}, the hash of its COSE message is {leaf.hex()}"
    if not ctx.selection.holds(d.dev, d.ts, data, entry):
        return leaf, f"the reading is not in the dataset's selection {ctx.selection}"
    return leaf, None
