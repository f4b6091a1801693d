"""Small statistics for the benchmark figures: percentiles, the knee of a curve, ratios."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from workers.batching import best_rows


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
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return best_rows(curve, tolerance=1 - fraction)


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


def work_in_window(runs: Sequence[tuple[float, float, float]], start: float, end: float) -> float:
    """The work done between ``start`` and ``end`` by jobs that each ran from ``runs[i][0]`` to
    ``runs[i][1]`` doing ``runs[i][2]`` work at an even pace (a job's steps take equal time:
    one denoiser call each, all of the same batch)."""
    if end <= start:
        raise ValueError(f"an empty window: {start} .. {end}")
    total = 0.0
    for began, finished, work in runs:
        if finished <= began:  # an instant job: all of it at one moment
            total += work if start <= began <= end else 0.0
            continue
        overlap = min(end, finished) - max(start, began)
        total += work * max(0.0, overlap) / (finished - began)
    return total
