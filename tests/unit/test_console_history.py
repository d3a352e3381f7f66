"""gateway.console.history: the overview's last hour, backfilled from batch entries."""

from __future__ import annotations

from gateway.console.history import History
from gateway.observe.metrics import LedgerFigures


def figures(readings: int, rejected: dict[str, int]) -> LedgerFigures:
    return LedgerFigures(readings=readings, entries=0, devices=0, revoked=0, checkpoint_size=0,
                         checkpoint_time_ms=None, rejected=rejected)


def test_backfill_then_samples() -> None:
    h = History(span=60, interval=5)
    now = 1_000_000.0
    # batches (t ms, n), newest first: 50 readings 2 s ago, 100 readings 22 s ago
    h.backfill(figures(1150, {}), [(int((now - 2) * 1000), 50), (int((now - 22) * 1000), 100)],
               now=now)
    j = h.to_json()
    rates = dict(zip(j["t"], j["anchored_per_s"], strict=True))
    assert rates[now] == 50 / 5  # the interval (now - 5, now] holds the 50
    assert rates[now - 20] == 100 / 5  # (now - 25, now - 20] holds the 100
    assert sum(r * 5 for r in rates.values()) == 150
    h.add(figures(1160, {"bad_signature": 2}), now=now + 5)
    h.add(figures(1180, {"bad_signature": 5, "too_large": 1}), now=now + 10)
    j = h.to_json()
    assert j["anchored_per_s"][-2:] == [2.0, 4.0]
    # refusals before the server started are unknown (None), then counted per interval
    assert j["refused_per_s"]["bad_signature"][-3:] == [None, 0.4, 0.6]
    assert j["refused_per_s"]["too_large"][-1] == 0.2
    assert h.rate() == 4.0
    assert len(j["t"]) <= 60 / 5 + 1
