"""Datasets and models (gateway/provenance/): the readings a dataset selects, streamed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from gateway.storage.core import (
    StoreCore,
    storage_error,
)


class ProvenanceRows(StoreCore):
    # --- provenance: datasets and models (gateway/provenance/) --------------------------------

    def provenance_readings(self, devices: Sequence[str], below: int,
                            chunk: int = 4096) -> Iterator[list[tuple[int, str, int, int, bytes]]]:
        """The readings of batch entries below `below` (of `devices`, all when empty), as lists
        of (id, dev, seq, batch entry, COSE bytes) in (dev, seq) order, `chunk` at a time.
        One SELECT: a consistent snapshot, streamed (memory bounded by `chunk`)."""
        where = "batch < ?"
        args: list[Any] = [below]
        if devices:
            where += f" AND dev IN ({', '.join('?' * len(devices))})"
            args += list(devices)
        with self.lock:
            try:
                cur = self.conn.execute(
                    f"SELECT id, dev, seq, batch, cose FROM readings WHERE {where} "
                    "ORDER BY dev, seq", args)
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "reading the database") from e
        try:
            while True:
                with self.lock:
                    try:
                        rows = cur.fetchmany(chunk)
                    except sqlite3.Error as e:
                        raise storage_error(e, self.path, "reading the database") from e
                if not rows:
                    return
                yield [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]
        finally:
            cur.close()

    def provenance_count(self, devices: Sequence[str], below: int) -> int:
        """How many readings `provenance_readings` goes through."""
        where, args = "batch < ?", [below, *devices]
        if devices:
            where += f" AND dev IN ({', '.join('?' * len(devices))})"
        return int(self.one(f"SELECT COUNT(*) FROM readings WHERE {where}", args)[0])

    def batch_row(self, entry: int) -> tuple[int, int, bytes, bytes] | None:
        """(first reading id, n, root, group roots blob) of the batch of ledger entry `entry`."""
        r = self.one("SELECT first, n, root, nodes FROM batches WHERE entry = ?", (entry,))
        return (int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3])) if r else None

    def cose_range(self, lo: int, hi: int) -> list[bytes]:
        """The COSE bytes of readings with ids lo <= id < hi, in id order."""
        return [bytes(r[0]) for r in self.query(
            "SELECT cose FROM readings WHERE id >= ? AND id < ? ORDER BY id", (lo, hi))]

    def entries_of_kind(self, kind: str, below: int) -> list[tuple[int, bytes]]:
        """(index, bytes) of the entries of `kind` with index < below, in ledger order."""
        return [(int(i), bytes(b)) for i, b in self.query(
            "SELECT i, body FROM entries WHERE kind = ? AND i < ? ORDER BY i", (kind, below))]
