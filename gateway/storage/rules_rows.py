"""The rules' tables (docs/rules.md): rule sets, firings and outcomes, the engine's state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.errors import IntegrityError
from gateway.ledger.entry import (
    RecordEntry,
    decode_entry,
    record_entry,
)
from gateway.storage.core import (
    Head,
    StoreCore,
    now_ms,
)


class RulesRows(StoreCore):
    # --- rules (#15, docs/rules.md): rule sets, firings, outcomes, the engine's state -------

    def latest_rules(self, c: sqlite3.Connection | None = None) -> RecordEntry | None:
        """The newest `rules` entry (inside a transaction when `c` is given)."""
        sql = "SELECT body FROM entries WHERE kind = 'rules' ORDER BY i DESC LIMIT 1"
        if c is None:
            row = self.one(sql)
        else:
            row = c.execute(sql).fetchone()
        if row is None:
            return None
        e = decode_entry(bytes(row[0]))
        if not isinstance(e, RecordEntry):
            raise IntegrityError(f"entry {e.i} has kind column 'rules' but is a {e.kind} entry",
                                 "run 'iot-anchor ledger verify'")
        return e

    def apply_rules(self, signer: Any, text: str, digest: bytes) -> tuple[int, int, bool]:
        """Append a `rules` entry unless the newest one has the same digest, in one
        transaction. Returns (entry index, version, appended)."""
        with self.write() as c:
            latest = self.latest_rules(c)
            if latest is not None and latest.fields["digest"] == digest:
                return latest.i, int(latest.fields["version"]), False
            version = 1 if latest is None else int(latest.fields["version"]) + 1
            head = self.head(c)
            body = record_entry(head.size, head.last_hash, "rules",
                                {"text": text, "digest": digest, "version": version}, now_ms())
            e = self.append_entry(c, head, "rules", body)
            self.checkpoint(c, head.tree, signer)
            c.execute("DELETE FROM rule_state")  # the new set starts with fresh state
        return e.index, version, True

    def append_record_in(self, c: sqlite3.Connection, head: Head, kind: str,
                         fields: dict[str, Any], t: int, signer: Any) -> tuple[Head, int]:
        """Inside a write transaction: append a record entry at `head` and sign its checkpoint.
        Returns (the new head, the entry's index)."""
        body = record_entry(head.size, head.last_hash, kind, fields, t)
        e = self.append_entry(c, head, kind, body)
        head = Head(e.index + 1, e.hash, head.tree)
        self.checkpoint(c, head.tree, signer)
        if kind == "action":
            c.execute("INSERT INTO actions (entry, rule, status) VALUES (?, ?, 'pending')",
                      (e.index, fields["rule"]))
        return head, e.index

    def rule_states(self, set_entry: int,
                    c: sqlite3.Connection | None = None) -> list[tuple[int, str, bytes]]:
        sql = "SELECT rule, dev, state FROM rule_state WHERE set_entry = ?"
        rows = self.query(sql, (set_entry,)) if c is None else c.execute(sql, (set_entry,))
        return [(int(r), str(d), bytes(s)) for r, d, s in rows]

    def save_rule_states(self, c: sqlite3.Connection, set_entry: int,
                         states: list[tuple[int, str, bytes]]) -> None:
        c.executemany("INSERT INTO rule_state (set_entry, rule, dev, state) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT (set_entry, rule, dev) DO UPDATE SET state = excluded.state",
                      [(set_entry, r, d, s) for r, d, s in states])

    def pending_actions(self, statuses: Sequence[str] = ("pending",),
                        after: int = -1) -> list[RecordEntry]:
        """Action entries above index `after` whose status is one of `statuses`, oldest
        first."""
        marks = ",".join("?" * len(statuses))
        out = []
        for (body,) in self.query(
                "SELECT e.body FROM actions a JOIN entries e ON e.i = a.entry "
                f"WHERE a.status IN ({marks}) AND a.entry > ? ORDER BY a.entry",
                (*statuses, after)):
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append(e)
        return out

    # an action's status moves only forward: pending -> sent | failed; sent -> done | failed
    OUTCOME_FROM = {"sent": ("pending",), "failed": ("pending", "sent"), "done": ("sent",)}

    def record_outcomes(self, signer: Any,
                        outcomes: Sequence[tuple[int, str, str | None, bytes | None]]
                        ) -> list[int]:
        """For each (action entry, status, reason, confirmation) whose action's current status
        allows it (`OUTCOME_FROM`; the others are repeats and are skipped), append an `outcome`
        entry with its checkpoint and set the status, in one transaction. Returns the outcome
        entries' indexes."""
        out = []
        with self.write() as c:
            head = self.head(c)
            t = now_ms()
            for action, status, reason, confirmation in outcomes:
                row = c.execute("SELECT status FROM actions WHERE entry = ?", (action,)).fetchone()
                if row is None or row[0] not in self.OUTCOME_FROM[status]:
                    continue
                fields: dict[str, Any] = {"action": action, "status": status}
                if reason is not None:
                    fields["reason"] = reason[:1024]
                if confirmation is not None:
                    fields["confirmation"] = confirmation
                head, i = self.append_record_in(c, head, "outcome", fields, t, signer)
                c.execute("UPDATE actions SET status = ?, outcome = ? WHERE entry = ?",
                          (status, i, action))
                out.append(i)
        return out

    def data_version(self) -> int:
        """SQLite's data_version: it changes when another connection commits (unlike
        `changed_elsewhere`, reading it resets nothing)."""
        with self.lock:
            return self._pragma("data_version")

    def action_log(self, rule: str | None = None) -> list[tuple[RecordEntry, str, int | None]]:
        """(action entry, status, outcome index) for every firing, oldest first."""
        sql = ("SELECT e.body, a.status, a.outcome FROM actions a JOIN entries e ON e.i = a.entry"
               + (" WHERE a.rule = ?" if rule is not None else "") + " ORDER BY a.entry")
        out = []
        for body, status, outcome in self.query(sql, (rule,) if rule is not None else ()):
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append((e, str(status), None if outcome is None else int(outcome)))
        return out
