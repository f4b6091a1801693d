"""Small statistics for the benchmark figures: percentiles, the knee of a curve, ratios."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolating linearly between closest ranks
    (numpy's default). With few samples a high percentile is close to the maximum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def knee(curve: Mapping[int, float], fraction: float = 0.95) -> int:
    """The smallest x (batch size) whose y (throughput) reaches ``fraction`` of the best y."""
    if not curve:
        raise ValueError("knee of an empty curve")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    best = max(curve.values())
    return min(x for x, y in curve.items() if y >= fraction * best)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; NaN when the denominator is zero (nothing to compare with)."""
    return numerator / denominator if denominator else math.nan


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    """ "met" or "missed" against a target; "n/a" for a figure that could not be measured."""
    if math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def format_ratio(value: float, target: float | None = None, higher_is_better: bool = True) -> str:
    """A ratio as ``0.93x``, with its target and verdict when it has one: ``0.93x (>= 0.95x: missed)``."""
    text = "n/a" if math.isnan(value) else f"{value:.2f}x"
    if target is None:
        return text
    sign = ">=" if higher_is_better else "<="
    return f"{text} ({sign} {target:.2f}x: {verdict(value, target, higher_is_better)})"
