"""The overview's last hour: the ledger's totals sampled every `INTERVAL` seconds while the
server runs (anchored readings, refusals by reason), kept for `SPAN` seconds in memory, and
started with the anchored readings of the hour before the server started (`backfill`)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from gateway.observe.metrics import LedgerFigures

INTERVAL = 5.0
SPAN = 3600.0


class History:
    def __init__(self, span: float = SPAN, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.span = span
        # (time, readings in the ledger, refusals by reason or None where unknown)
        self._samples: deque[tuple[float, int, dict[str, int] | None]] = deque(
            maxlen=int(span / interval) + 1)

    def add(self, f: LedgerFigures, now: float | None = None) -> None:
        self._samples.append((time.time() if now is None else now, f.readings,
                              dict(f.rejected)))

    def backfill(self, f: LedgerFigures, batches: list[tuple[int, int]],
                 now: float | None = None) -> None:
        """Start the history with the last hour as the ledger's batch entries tell it
        (`batches`: (t ms, readings), newest first): anchored readings per interval. The
        refusals of that time are not in the ledger (it keeps counters, not times): those
        samples have none, and the plot starts them when the server started."""
        now = time.time() if now is None else now
        n = self._samples.maxlen or 1
        edges = [now - self.interval * k for k in range(n - 1, 0, -1)]
        later = 0  # readings in batches after the edge
        k = 0
        counts = []
        for edge in reversed(edges):  # newest edge first
            while k < len(batches) and batches[k][0] / 1000 > edge:
                later += batches[k][1]
                k += 1
            counts.append((edge, f.readings - later))
        for edge, total in reversed(counts):
            self._samples.append((edge, total, None))
        self.add(f, now)

    def rate(self) -> float | None:
        """Readings anchored per second between the two newest samples."""
        if len(self._samples) < 2:
            return None
        (t0, n0, _), (t1, n1, _) = self._samples[-2], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def to_json(self) -> dict[str, Any]:
        """Columns for the plots: t, anchored per second and refused per second by reason,
        each over the interval that ends at t."""
        s = list(self._samples)
        reasons = sorted({r for _, _, rej in s for r in (rej or ())})
        t: list[float] = []
        anchored: list[float] = []
        refused: dict[str, list[float | None]] = {r: [] for r in reasons}
        for (t0, n0, r0), (t1, n1, r1) in zip(s, s[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            t.append(t1)
            anchored.append(max(0, n1 - n0) / dt)
            for r in reasons:
                refused[r].append(None if r0 is None or r1 is None
                                  else max(0, r1.get(r, 0) - r0.get(r, 0)) / dt)
        return {"interval": self.interval, "t": t, "anchored_per_s": anchored,
                "refused_per_s": refused}
