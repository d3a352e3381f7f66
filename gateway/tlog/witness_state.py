"""A witness's durable state: the latest checkpoint it cosigned per log, in SQLite.

`WitnessState.add_checkpoint` is the whole tlog-witness decision for one request: the checks in
the spec's order, then the new state committed (synchronous=FULL) before it returns "cosign".
Calls are serialised by a lock and each runs in one BEGIN IMMEDIATE transaction, so two
requests never both pass the old-size check against the same state (the spec's race), and a
process killed at any point leaves either the old state or the new one: the witness only ever
cosigns the checkpoint its committed state holds, so it never cosigns two inconsistent ones.

``DIR/witness.db``: ``logs(origin, size, root, note, t)``, the latest cosigned checkpoint per
log; ``refused(id, origin, status, reason, note, t)``, validly signed checkpoints refused for
inconsistency (possible evidence of a log's misbehaviour, kept as the spec allows).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StorageError
from gateway.ledger import merkle, note
from gateway.ledger.cosignature import parse_add_checkpoint
from gateway.ledger.merkle import ProofError
from gateway.ledger.note import NoteError

DB_NAME = "witness.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL,
    t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY, origin TEXT NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL,
    note TEXT NOT NULL, t INTEGER NOT NULL);
"""
MAX_REFUSED = 10_000  # kept at most (the oldest are dropped)


@dataclass(frozen=True)
class Decision:
    """HTTP status, and for 200 the checkpoint text to cosign; for 409 the witness's size."""

    status: int
    reason: str
    text: str = ""
    size: int = 0


class WitnessState:
    def __init__(self, data_dir: Path, logs: dict[str, str]) -> None:
        """`logs`: origin -> the log's vkey (signed-note, Ed25519)."""
        self.path = Path(data_dir) / DB_NAME
        self.logs = logs
        self.lock = threading.Lock()
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                        timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the witness state {self.path}: {e}",
                               "check --data DIR and its permissions") from e

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def latest(self, origin: str) -> tuple[int, bytes, str] | None:
        with self.lock:
            row = self.conn.execute("SELECT size, root, note FROM logs WHERE origin = ?",
                                    (origin,)).fetchone()
        return (int(row[0]), bytes(row[1]), str(row[2])) if row else None

    def add_checkpoint(self, body: bytes) -> Decision:
        try:
            req = parse_add_checkpoint(body)
        except NoteError as e:
            return Decision(400, e.what)
        origin = req.checkpoint.split("\n", 1)[0]
        vkey = self.logs.get(origin)
        if vkey is None:
            return Decision(404, f"unknown log origin {origin[:80]!r}")
        try:
            text = note.verify_note(req.checkpoint, vkey)
        except NoteError as e:
            return Decision(403, e.what)
        try:
            cp = note.parse_checkpoint(text)
        except NoteError as e:
            return Decision(400, e.what)
        if req.old > cp.size:
            return Decision(400, f"old size {req.old} is above the checkpoint size {cp.size}")
        with self.lock:
            try:
                return self._decide(req.old, req.proof, cp, text, req.checkpoint)
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                return Decision(503, f"the witness state cannot be written: {e}")

    def _decide(self, old: int, proof: list[bytes], cp: note.Checkpoint, text: str,
                signed: str) -> Decision:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        committed = False
        try:
            row = c.execute("SELECT size, root FROM logs WHERE origin = ?",
                            (cp.origin,)).fetchone()
            size, root = (int(row[0]), bytes(row[1])) if row else (0, merkle.EMPTY_ROOT)
            if old != size:
                return Decision(409, f"old size {old} is not the latest cosigned size {size}",
                                size=size)
            bad = None
            if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
                bad = "a checkpoint of size 0 must have the empty tree's root"
            elif old == 0 and proof:
                bad = "a consistency proof from size 0 must be empty"
            elif old == cp.size and (proof or cp.root != root):
                bad = f"the checkpoint has size {old} like the latest but another root"
            elif 0 < old < cp.size:
                try:
                    merkle.verify_consistency(old, cp.size, proof, root, cp.root)
                except ProofError as e:
                    bad = f"the consistency proof from {old} to {cp.size} fails: {e.what}"
            if bad is not None:
                c.execute("INSERT INTO refused (origin, status, reason, note, t) "
                          "VALUES (?, 422, ?, ?, ?)", (cp.origin, bad, signed, int(time.time())))
                c.execute("DELETE FROM refused WHERE id <= (SELECT MAX(id) FROM refused) - ?",
                          (MAX_REFUSED,))
                c.execute("COMMIT")
                committed = True
                return Decision(422, bad)
            c.execute("INSERT OR REPLACE INTO logs (origin, size, root, note, t) "
                      "VALUES (?, ?, ?, ?, ?)",
                      (cp.origin, cp.size, cp.root, signed, int(time.time())))
            c.execute("COMMIT")
            committed = True
            return Decision(200, "cosigned", text, cp.size)
        finally:
            if not committed:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")

