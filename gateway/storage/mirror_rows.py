"""A mirror's replica (gateway/tlog/mirror.py): made without a gateway key, filled with fetched
entries, readings and checkpoints.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Self

from gateway.errors import ConfigError, StorageError
from gateway.ledger import merkle
from gateway.storage.core import (
    VKEY_NAME,
    StoreCore,
    now_ms,
)
from gateway.storage.location import parse_store


class MirrorRows(StoreCore):
    # --- mirrors (#16; gateway/tlog/mirror.py): a replica holds no gateway key ------------

    @classmethod
    def create_mirror(cls, data_dir: str | os.PathLike[str], vkey: str, source: str) -> Self:
        """A new, empty data directory for a mirror of the log at `source` signed by `vkey`:
        no gateway.key (a mirror signs nothing), gateway.vkey, meta mirror_of = source; the
        database where --store says (default DIR/ledger.db)."""
        d = Path(data_dir)
        where = parse_store(None, d)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise ConfigError(f"data directory {d} already exists and is not a mirror",
                              "pick another --data DIR for the mirror, or remove it first")
        if where.kind == "postgresql":
            cls.check_empty_pg(where)
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            (d / VKEY_NAME).write_text(vkey + "\n")
        except OSError as e:
            raise StorageError(f"cannot create mirror directory {d}: {e.strerror}",
                               "check the path and its permissions") from e
        store = cls._connect(d, create=True, where=where)
        with store.write() as c:
            c.execute("INSERT INTO meta VALUES ('gateway_vkey', ?)", (vkey,))
            c.execute("INSERT INTO meta VALUES ('created', ?)", (now_ms(),))
            c.execute("INSERT INTO meta VALUES ('ledger_range', ?)",
                      (merkle.CompactRange().to_bytes(),))
            c.execute("INSERT INTO meta VALUES ('mirror_of', ?)", (source,))
        return store

    def key_history(self) -> dict[str, list[tuple[bytes, int, int | None]]]:
        """dev -> [(SEC1 key, from entry, until entry or None)], oldest first."""
        out: dict[str, list[tuple[bytes, int, int | None]]] = {}
        for dev, key, f, u in self.query("SELECT dev, key, from_entry, until_entry FROM "
                                         "device_keys ORDER BY dev, from_entry"):
            out.setdefault(str(dev), []).append((bytes(key), int(f),
                                                 None if u is None else int(u)))
        return out

    def stored_reading(self, c: sqlite3.Connection, dev: str, seq: int) -> bytes | None:
        row = c.execute("SELECT cose FROM readings WHERE dev = ? AND seq = ?",
                        (dev, seq)).fetchone()
        return bytes(row[0]) if row else None

    def mirror_device(self, c: sqlite3.Connection, index: int, dev: str, key: bytes,
                      action: str) -> None:
        """The registry tables after device entry `index` (as `device_event` keeps them)."""
        if action == "add":
            c.execute("INSERT INTO devices (id, key, status, entry) VALUES (?, ?, 'active', ?)",
                      (dev, key, index))
            c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)", (dev, key, index))
            return
        c.execute("UPDATE device_keys SET until_entry = ? WHERE dev = ? AND until_entry IS NULL",
                  (index, dev))
        if action == "rotate":
            c.execute("INSERT INTO device_keys VALUES (?, ?, ?, NULL)", (dev, key, index))
            c.execute("UPDATE devices SET key = ?, entry = ? WHERE id = ?", (key, index, dev))
        else:
            c.execute("UPDATE devices SET status = 'revoked', entry = ? WHERE id = ?",
                      (index, dev))

    def mirror_batch(self, c: sqlite3.Connection, index: int, root: bytes, nodes: list[bytes],
                     readings: list[tuple[str, int, bytes]]) -> None:
        """Store batch entry `index`'s readings (dev, seq, COSE) in leaf order, and move each
        device's counters (readings, last_seq, upto) as the pipeline does."""
        row = c.execute("SELECT MAX(id) FROM readings").fetchone()
        first = 0 if row[0] is None else int(row[0]) + 1
        c.execute("INSERT INTO batches (entry, first, n, root, nodes) VALUES (?, ?, ?, ?, ?)",
                  (index, first, len(readings), root, b"".join(nodes)))
        c.executemany("INSERT INTO readings (id, dev, seq, batch, cose) VALUES (?, ?, ?, ?, ?)",
                      [(first + k, d, q, index, m) for k, (d, q, m) in enumerate(readings)])
        by_dev: dict[str, list[int]] = {}
        for d, q, _ in readings:
            by_dev.setdefault(d, []).append(q)
        for dev, seqs in by_dev.items():
            r = c.execute("SELECT upto, last_seq FROM devices WHERE id = ?", (dev,)).fetchone()
            upto = int(r[0]) if r else -1
            last = max(r[1] if r and r[1] is not None else -1, max(seqs))
            while c.execute("SELECT 1 FROM readings WHERE dev = ? AND seq = ?",
                            (dev, upto + 1)).fetchone():
                upto += 1
            c.execute("UPDATE devices SET readings = readings + ?, last_seq = ?, upto = ? "
                      "WHERE id = ?", (len(seqs), last, upto, dev))

    def mirror_event(self, c: sqlite3.Connection, kind: str, dev: str, seq: int, detail: str
                     ) -> None:
        c.execute("INSERT INTO events (kind, dev, seq, cose, detail, t) VALUES (?,?,?,?,?,?)",
                  (kind, dev, seq, None, detail, now_ms()))

    def mirror_checkpoint(self, c: sqlite3.Connection, tree: merkle.CompactRange, text: str,
                          cosigs: dict[str, str]) -> None:
        """Store a fetched checkpoint (the gateway's note, its size the tree's) and its
        cosignature lines (by witness); the tree's compact range becomes the ledger head."""
        size, root = tree.size, tree.root()
        c.execute("INSERT OR IGNORE INTO checkpoints (size, root, note) VALUES (?, ?, ?)",
                  (size, root, text))
        for w, line in cosigs.items():
            c.execute("INSERT OR REPLACE INTO cosignatures (size, witness, line) VALUES (?,?,?)",
                      (size, w, line))
        c.execute("UPDATE meta SET value = ? WHERE key = 'ledger_range'", (tree.to_bytes(),))

    def ledger_root_at(self, size: int) -> bytes:
        """The ledger tree's root at `size` from the stored nodes (EMPTY_ROOT for 0)."""
        if size == 0:
            return merkle.EMPTY_ROOT
        with self.lock:
            return self._range_root(0, size)
