"""Figures from samples: percentiles, medians over runs, rates. A figure that could not be
measured is NaN (or None from `percentile` and `median`), never an exception."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of `ordered`, which must be sorted; None if empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def median(values: Iterable[Any]) -> Any:
    """The median of the values that were measured (not None, not NaN); None if none was."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(xs) if xs else None


def per_second(count: float, seconds: float) -> float:
    """count / seconds; NaN when no time (or no valid time) passed."""
    return count / seconds if seconds > 0 else math.nan


def us_per(cpu_s: float, count: int) -> float:
    """Microseconds of CPU per item; a count below 1 counts as 1."""
    return 1e6 * cpu_s / max(1, count)
