"""A dataset's selection, its rows and the files of an exported dataset directory (pure).

Directory layout (`iot-anchor dataset export OUT`; docs/provenance.md specifies it)::

    OUT/croissant.json           Croissant 1.1 metadata, written last
    OUT/data/readings.parquet    the rows, in (device, seq) order
    OUT/provenance/readings.bin  each row's COSE message, in row order: a 4-byte big-endian
                                 length, then the message (the format of `ingest --binary`)
    OUT/provenance/batches.cbor  a CBOR sequence (RFC 8742), one map per batch entry that
                                 holds a row, in ledger order (`BatchProof`)
    OUT/provenance/ledger.json   the checkpoint and the proven ledger entries (`LedgerProof`)

Row columns: `device` (string), `seq` (int64), `ts` (timestamp[ms, UTC]: the device clock's
whole seconds; null while it was unset), one float64 column per sensor in sorted order (null
where the reading lacks it), `leaf` (binary(32): SHA-256(0x00 || COSE)), `entry` (int64: the
ledger index of the reading's batch entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.errors import IntegrityError

DATA_FILE = "data/readings.parquet"
READINGS_FILE = "provenance/readings.bin"
BATCHES_FILE = "provenance/batches.cbor"
LEDGER_FILE = "provenance/ledger.json"
METADATA_FILE = "croissant.json"
FIXED_COLUMNS = ("device", "seq", "ts")
TRAILING_COLUMNS = ("leaf", "entry")
RESERVED_COLUMNS = frozenset(FIXED_COLUMNS + TRAILING_COLUMNS)
LEDGER_FORMAT = 1


@dataclass(frozen=True)
class Selection:
    """Which anchored readings a dataset holds (gateway.ledger.provenance, `selection`)."""

    devices: tuple[str, ...]
    sensors: tuple[str, ...]
    below: int
    since: int | None = None
    until: int | None = None

    def as_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": list(self.devices), "sensors": list(self.sensors),
                               "below": self.below}
        if self.since is not None:
            out["since"] = self.since
        if self.until is not None:
            out["until"] = self.until
        return out

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Selection:
        return cls(tuple(f["devices"]), tuple(f["sensors"]), f["below"], f.get("since"),
                   f.get("until"))

    def holds(self, dev: str, ts: int | None, data: dict[str, Any], entry: int) -> bool:
        """True when a reading of `dev` with this ts and data, anchored in batch entry
        `entry`, belongs to the selection."""
        if entry >= self.below or (self.devices and dev not in self.devices):
            return False
        if self.since is not None and (ts is None or ts < self.since):
            return False
        if self.until is not None and (ts is None or ts >= self.until):
            return False
        return not self.sensors or any(s in data for s in self.sensors)


def check_sensor_names(names: Sequence[str]) -> None:
    clash = sorted(set(names) & RESERVED_COLUMNS)
    if clash:
        raise IntegrityError(f"sensor name(s) {clash} clash with the columns "
                             f"{sorted(RESERVED_COLUMNS)}",
                             "leave them out with --sensor for the other sensors")


@dataclass(frozen=True)
class BatchProof:
    """One record of batches.cbor: the rows of batch entry `entry` (of `n` readings): their
    leaf indices in the batch (increasing), their row numbers in the dataset, their leaf
    hashes (concatenated, in index order) and the shared multi-leaf proof
    (gateway.ledger.multiproof; its hashes concatenated)."""

    entry: int
    n: int
    index: list[int]
    row: list[int]
    leaves: bytes
    proof: bytes

    def encode(self) -> bytes:
        return cbor2.dumps({"entry": self.entry, "n": self.n, "index": self.index,
                            "row": self.row, "leaf": self.leaves, "proof": self.proof},
                           canonical=True)

    @classmethod
    def from_obj(cls, obj: Any, where: str) -> BatchProof:
        keys = {"entry", "n", "index", "row", "leaf", "proof"}
        if type(obj) is not dict or set(obj) != keys:
            raise IntegrityError(f"{where}: not a batch proof map {sorted(keys)}",
                                 "the provenance was altered; export the dataset again")
        e, n, ix, rows, lv, pf = (obj[k] for k in ("entry", "n", "index", "row", "leaf",
                                                    "proof"))
        ok = (type(e) is int and type(n) is int and type(ix) is list and type(rows) is list
              and type(lv) is bytes and type(pf) is bytes and len(ix) == len(rows)
              and len(lv) == 32 * len(ix) and len(pf) % 32 == 0
              and all(type(i) is int for i in ix) and all(type(r) is int for r in rows))
        if not ok:
            raise IntegrityError(f"{where}: a field of the batch proof has the wrong type or "
                                 "length", "the provenance was altered; export it again")
        return cls(e, n, ix, rows, lv, pf)

    def leaf_list(self) -> list[bytes]:
        return [self.leaves[i:i + 32] for i in range(0, len(self.leaves), 32)]

    def proof_list(self) -> list[bytes]:
        return [self.proof[i:i + 32] for i in range(0, len(self.proof), 32)]


def reading_record(cose: bytes) -> bytes:
    """One record of readings.bin."""
    return len(cose).to_bytes(4, "big") + cose
