"""The operator console's reads (docs/console.md): bounded, each on an index; the per-device daily
counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.ledger.entry import (
    RecordEntry,
    decode_entry,
)
from gateway.storage.tlog_rows import TlogRows


class ConsoleRows(TlogRows):
    # --- operator console (#17): bounded reads, each on an index ------------------------------
    # gateway/console calls these on its own read-only Store (one per reader thread).

    # a device's last commit with readings (the devices table's "last seen"), on device_days'
    # primary key
    CONSOLE_LAST_T = ("(SELECT l.last_t FROM device_days l WHERE l.dev = d.id AND l.last_t IS "
                      "NOT NULL ORDER BY l.day DESC LIMIT 1)")
    CONSOLE_SORTS = {  # devices table: sort key -> SQL expression
        "id": "d.id", "status": "d.status", "readings": "d.readings",
        "last_seq": "COALESCE(d.last_seq, -1)", "last_seen": f"COALESCE({CONSOLE_LAST_T}, 0)",
        "gaps": "COALESCE(d.last_seq + 1 - d.readings, 0)", "today": "COALESCE(t.readings, 0)",
        "rejected_today": "COALESCE(t.rejected, 0)",
    }

    def console_figures(self) -> dict[str, Any]:
        """The ledger's totals: what `ledger status` counts, without its per-device lists."""
        devices, revoked = self.one(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END), 0) "
            "FROM devices")
        last = self.one("SELECT body FROM entries ORDER BY i DESC LIMIT 1")
        cp = self.latest_checkpoint()
        return {
            "readings": self.reading_count(), "entries": self.entry_count(),
            "devices": int(devices), "revoked": int(revoked),
            "checkpoint_size": cp[0] if cp else 0, "checkpoint": cp[1] if cp else None,
            "last_entry_t": decode_entry(bytes(last[0])).t if last else None,
            "rejected": self.rejected_counts(),
            "events": {k: int(n) for k, n in self.query(
                "SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")},
            "cosignatures": len(self.cosignature_lines(cp[0])) if cp else 0,
            "witnesses": self.witness_statuses(),
        }

    def console_devices(self, *, day: int, sort: str = "id", desc: bool = False,
                        q: str = "", status: str = "", offset: int = 0,
                        limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
        """One page of the devices table: (rows matching, the page). `q` filters ids by
        substring, `status` by status; `day` is the UTC day of "today" (ms // 86,400,000)."""
        where, args = [], []
        if q:
            where.append("d.id LIKE ? ESCAPE '\\'")
            args.append("%" + q.replace("\\", "\\\\").replace("%", "\\%")
                        .replace("_", "\\_") + "%")
        if status:
            where.append("d.status = ?")
            args.append(status)
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = int(self.one(f"SELECT COUNT(*) FROM devices d{cond}", args)[0])
        order = self.CONSOLE_SORTS[sort] + (" DESC" if desc else "")
        rows = self.query(
            f"SELECT d.id, d.key, d.status, d.entry, d.readings, d.last_seq, d.upto, "
            f"{self.CONSOLE_LAST_T}, "
            "COALESCE(t.readings, 0), COALESCE(t.rejected, 0) FROM devices d "
            "LEFT JOIN device_days t ON t.dev = d.id AND t.day = ?"
            f"{cond} ORDER BY {order}, d.id LIMIT ? OFFSET ?", [day, *args, limit, offset])
        out = []
        for dev, key, st, entry, n, last_seq, upto, last_t, today, rej in rows:
            out.append({"id": dev, "key": bytes(key), "status": st, "entry": entry,
                        "readings": n, "last_seq": last_seq, "upto": upto, "last_t": last_t,
                        "today": today, "rejected_today": rej,
                        "missing": 0 if last_seq is None else last_seq + 1 - n})
        return total, out

    def console_last_seen(self, dev: str) -> int | None:
        """The time (ms) of the last commit with readings of `dev` (None: none since the
        console's migration, schema 4)."""
        row = self.one("SELECT last_t FROM device_days WHERE dev = ? AND last_t IS NOT NULL "
                       "ORDER BY day DESC LIMIT 1", (dev,))
        return None if row is None or row[0] is None else int(row[0])

    def console_key_history(self, dev: str) -> list[tuple[bytes, int, int | None]]:
        """A device's keys: (key, from entry, until entry or None), oldest first."""
        return [(bytes(k), int(a), b) for k, a, b in self.query(
            "SELECT key, from_entry, until_entry FROM device_keys WHERE dev = ? "
            "ORDER BY from_entry LIMIT 1000", (dev,))]

    def console_gaps(self, dev: str, after: int, last: int, *, max_gaps: int = 20,
                     max_rows: int = 20_000) -> tuple[list[list[int]], int | None]:
        """The missing seq ranges [lo, hi] of `dev` between `after` (its watermark `upto`:
        every seq up to it is stored) and `last` (its highest seq): at most `max_gaps` ranges,
        walking at most `max_rows` entries of the (dev, seq) index. Also the seq the walk
        stopped at when it stopped short of `last` (None: every gap is listed)."""
        gaps: list[list[int]] = []
        prev, walked = after, 0
        while prev < last and len(gaps) < max_gaps and walked < max_rows:
            rows = self.query("SELECT seq FROM readings WHERE dev = ? AND seq > ? ORDER BY seq "
                              "LIMIT 2000", (dev, prev))
            if not rows:
                break
            walked += len(rows)
            for (s,) in rows:
                if s > prev + 1:
                    gaps.append([prev + 1, int(s) - 1])
                prev = int(s)
                if len(gaps) >= max_gaps:
                    break
        return gaps, (None if prev >= last else prev)

    def console_device_days(self, dev: str, limit: int = 31) -> list[tuple[int, int, int]]:
        """(day, readings, rejected) of a device's newest `limit` days, newest first."""
        return [(int(d), int(n), int(r)) for d, n, r in self.query(
            "SELECT day, readings, rejected FROM device_days WHERE dev = ? ORDER BY day DESC "
            "LIMIT ?", (dev, limit))]

    def console_reading_from(self, dev: str, seq: int) -> tuple[int, int, bytes] | None:
        """The stored reading of `dev` with the smallest seq >= `seq`: (seq, batch, cose)."""
        row = self.one("SELECT seq, batch, cose FROM readings WHERE dev = ? AND seq >= ? "
                       "ORDER BY seq LIMIT 1", (dev, seq))
        return (int(row[0]), int(row[1]), bytes(row[2])) if row else None

    def console_seq_bounds(self, dev: str) -> tuple[int, int] | None:
        """The smallest and largest stored seq of `dev`."""
        lo = self.one("SELECT MIN(seq), MAX(seq) FROM readings WHERE dev = ?", (dev,))
        return None if lo is None or lo[0] is None else (int(lo[0]), int(lo[1]))

    def console_count(self, dev: str, lo: int, hi: int) -> int:
        """Stored readings of `dev` with lo <= seq <= hi."""
        return int(self.one("SELECT COUNT(*) FROM readings WHERE dev = ? AND seq BETWEEN ? "
                            "AND ?", (dev, lo, hi))[0])

    def console_readings(self, dev: str, lo: int, hi: int, limit: int, *,
                         newest: bool = False) -> list[tuple[int, int, bytes]]:
        """(seq, batch, cose) of `dev` with lo <= seq <= hi, at most `limit`, by seq (the
        newest first with `newest`)."""
        order = "DESC" if newest else "ASC"
        return [(int(a), int(b), bytes(c)) for a, b, c in self.query(
            f"SELECT seq, batch, cose FROM readings WHERE dev = ? AND seq BETWEEN ? AND ? "
            f"ORDER BY seq {order} LIMIT ?", (dev, lo, hi, limit))]

    def console_entry_times(self, entries: Sequence[int]) -> dict[int, int]:
        """Entry index -> its time `t` (ms), for the given entries (at most 1,000)."""
        out: dict[int, int] = {}
        for i in sorted(set(entries))[:1000]:
            body = self.entry_body(i)
            if body is not None:
                out[i] = decode_entry(body).t
        return out

    def console_events(self, dev: str | None, limit: int = 100) -> list[dict[str, Any]]:
        """A device's newest security events (all devices' with dev None), newest first."""
        sql = "SELECT id, kind, dev, seq, detail, t FROM events"
        rows = self.query(sql + " WHERE dev = ? ORDER BY seq DESC, id DESC LIMIT ?",
                          (dev, limit)) if dev is not None else self.query(
            sql + " ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": a, "kind": k, "dev": d, "seq": s, "detail": x, "t": t}
                for a, k, d, s, x, t in rows]

    def console_batches_since(self, since_ms: int, limit: int = 20_000
                              ) -> list[tuple[int, int]]:
        """(t, n) of the newest batch entries with t >= since_ms, newest first, at most
        `limit` (the entries_kind index, newest first; stops at the first older one)."""
        out: list[tuple[int, int]] = []
        before = 1 << 62
        while len(out) < limit:
            rows = self.query("SELECT i, body FROM entries WHERE kind = 'batch' AND i < ? "
                              "ORDER BY i DESC LIMIT 500", (before,))
            for i, body in rows:
                e = decode_entry(bytes(body))
                if e.t < since_ms or len(out) >= limit:
                    return out
                out.append((e.t, getattr(e, "n", 0)))
                before = i
            if len(rows) < 500:
                break
        return out

    def console_kinds_present(self, kinds: Sequence[str]) -> list[str]:
        """Those of `kinds` that have at least one entry."""
        return [k for k in kinds
                if self.one("SELECT 1 FROM entries WHERE kind = ? LIMIT 1", (k,))]

    def console_records(self, kind: str, *, before: int | None = None,
                        limit: int = 50) -> list[RecordEntry]:
        """The newest `limit` entries of a record kind below entry `before`, newest first."""
        rows = self.query("SELECT body FROM entries WHERE kind = ? AND i < ? ORDER BY i DESC "
                          "LIMIT ?", (kind, (1 << 62) if before is None else before, limit))
        out = []
        for (body,) in rows:
            e = decode_entry(bytes(body))
            if isinstance(e, RecordEntry):
                out.append(e)
        return out
