"""The transparency log's reads and the witnesses' tables (docs/tlog.md): tiles and entry bundles,
cosignatures, witness status.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.errors import IntegrityError
from gateway.storage.core import (
    StoreCore,
    now_ms,
    storage_error,
)


class TlogRows(StoreCore):
    # --- tlog tiles, witnesses, mirrors (#16; docs/tlog.md) ---------------------------------

    def cosignature_lines(self, size: int) -> list[str]:
        """The cosignature lines gathered for the checkpoint of `size`, by witness."""
        return [str(r[0]) for r in self.query(
            "SELECT line FROM cosignatures WHERE size = ? ORDER BY witness", (size,))]

    def add_cosignature(self, size: int, witness: str, line: str, url: str | None = None
                        ) -> None:
        """Store a witness's cosignature line; with `url`, its status ("ok", that size) in the
        same transaction."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO cosignatures (size, witness, line) "
                      "VALUES (?, ?, ?)", (size, witness, line))
            if url is not None:
                c.execute("INSERT OR REPLACE INTO witness_status (witness, url, size, state, "
                          "detail, t) VALUES (?, ?, ?, 'ok', ?, ?)",
                          (witness, url, size, f"cosigned size {size}", now_ms()))

    def relax_durability(self) -> None:
        """This connection's commits skip the fsync (WAL, synchronous=NORMAL): for writes whose
        loss on a power cut is harmless (a cosignature; later ones replace it), so they do not
        compete with the pipeline's commits for the disk."""
        with self.lock:
            try:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as e:
                raise storage_error(e, self.path, "setting synchronous") from e

    def set_witness_status(self, witness: str, url: str, size: int, state: str,
                           detail: str) -> None:
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO witness_status (witness, url, size, state, "
                      "detail, t) VALUES (?, ?, ?, ?, ?, ?)",
                      (witness, url, size, state, detail, now_ms()))

    def set_witness_config(self, witnesses: list[tuple[str, str]], quorum: int) -> None:
        """`run --witness`: the witnesses (vkey, URL) and quorum now configured; the status
        of a witness no longer configured is dropped."""
        with self.write() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('witness_quorum', ?)",
                      (quorum,))
            keep = {v for v, _ in witnesses}
            for (w,) in c.execute("SELECT witness FROM witness_status").fetchall():
                if w not in keep:
                    c.execute("DELETE FROM witness_status WHERE witness = ?", (w,))
            for v, url in witnesses:
                c.execute("INSERT OR IGNORE INTO witness_status (witness, url, size, state, "
                          "detail, t) VALUES (?, ?, 0, 'pending', '', ?)", (v, url, now_ms()))
                c.execute("UPDATE witness_status SET url = ? WHERE witness = ?", (url, v))

    def witness_statuses(self) -> list[dict[str, Any]]:
        return [{"witness": w, "url": u, "size": int(n), "state": st, "detail": d, "t": int(t)}
                for w, u, n, st, d, t in self.query(
                    "SELECT witness, url, size, state, detail, t FROM witness_status "
                    "ORDER BY witness")]

    def best_checkpoint(self, index: int) -> tuple[int, str] | None:
        """The checkpoint to prove entry `index` under: of those covering it, the one with the
        most cosignatures, the latest among equals; (size, note with its cosignature lines)."""
        best = self.one("SELECT size, COUNT(*) AS n FROM cosignatures WHERE size > ? "
                        "GROUP BY size ORDER BY n DESC, size DESC LIMIT 1", (index,))
        latest = self.latest_checkpoint()
        if latest is None or latest[0] <= index:
            return None
        size = latest[0]
        if best is not None and len(self.cosignature_lines(size)) < int(best[1]):
            size = int(best[0])
        text = self.checkpoint_note(size)
        if text is None:
            return None
        return size, text + "".join(self.cosignature_lines(size))

    def with_best_checkpoint(self, parts: dict[str, Any]) -> dict[str, Any]:
        """Receipt parts (`receipt_parts`, `entry_receipt_parts`) moved onto `best_checkpoint`:
        the entry proof recomputed for its size, the note carrying its cosignatures."""
        best = self.best_checkpoint(int(parts["entry_index"]))
        if best is None:
            return parts
        size, text = best
        proof = self.entry_proof(int(parts["entry_index"]), size)
        return {**parts, "tree_size": size, "entry_proof": proof, "checkpoint": text}

    def tile_hashes(self, level: int, lo: int, hi: int) -> list[bytes]:
        """The stored ledger-tree nodes at tree `level` with lo <= index < hi, in order (a
        tile's hashes: level 8L, indices N*256 ..); fewer when the tree has fewer."""
        return [bytes(r[0]) for r in self.query(
            "SELECT hash FROM ledger_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
            (level, lo, hi))]

    def entry_bodies(self, lo: int, hi: int) -> list[bytes]:
        """Entries lo <= i < hi, in order (an entry bundle); fewer when there are fewer."""
        return [bytes(r[0]) for r in self.query(
            "SELECT body FROM entries WHERE i >= ? AND i < ? ORDER BY i", (lo, hi))]

    def batch_readings(self, entry: int) -> list[bytes] | None:
        """The COSE messages of batch entry `entry` in leaf order, or None if it is no batch."""
        with self.lock:
            try:
                row = self.conn.execute("SELECT first, n FROM batches WHERE entry = ?",
                                        (entry,)).fetchone()
                if row is None:
                    return None
                first, n = int(row[0]), int(row[1])
                out = [bytes(r[0]) for r in self.conn.execute(
                    "SELECT cose FROM readings WHERE id >= ? AND id < ? ORDER BY id",
                    (first, first + n))]
            except sqlite3.Error as e:
                self._forget_cache()
                raise storage_error(e, self.path, "reading the database") from e
        if len(out) != n:
            raise IntegrityError(f"batch {entry} is missing readings", "run 'iot-anchor ledger "
                                 "verify'")
        return out
