"""The overview's last hour: the ledger's totals sampled every `INTERVAL` seconds while the
server runs (anchored readings, refusals by reason), kept for `SPAN` seconds in memory."""

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
        self._samples: deque[tuple[float, int, dict[str, int]]] = deque(
            maxlen=int(span / interval) + 1)

    def add(self, f: LedgerFigures, now: float | None = None) -> None:
        self._samples.append((time.time() if now is None else now, f.readings,
                              dict(f.rejected)))

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
        reasons = sorted({r for _, _, rej in s for r in rej})
        t: list[float] = []
        anchored: list[float] = []
        refused: dict[str, list[float]] = {r: [] for r in reasons}
        for (t0, n0, r0), (t1, n1, r1) in zip(s, s[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            t.append(t1)
            anchored.append(max(0, n1 - n0) / dt)
            for r in reasons:
                refused[r].append(max(0, r1.get(r, 0) - r0.get(r, 0)) / dt)
        return {"interval": self.interval, "t": t, "anchored_per_s": anchored,
                "refused_per_s": refused}
