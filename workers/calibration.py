"""Measure the engine's throughput curve at start-up, to choose the tick size on this hardware.

A few calls per batch size on random inputs (the denoiser's cost does not depend on the
values), timed with the engine's own clock. ``workers.batching.tick_rows`` turns the curve
into rows per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

Run = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A GPU's curve keeps rising long after a CPU's has flattened (at batch 1 it is launch-bound).
GPU_SIZES = (*SIZES, 512, 1024, 2048)


def sizes_for(device: str) -> tuple[int, ...]:
    """The batch sizes to measure on ``device`` (``cpu`` or ``cuda``)."""
    return GPU_SIZES if device == "cuda" else SIZES


def measure_curve(
    run: Run,
    sample_shape: tuple[int, int, int],
    condition: Callable[[int], np.ndarray],
    sizes: Sequence[int] = SIZES,
    seconds_per_size: float = 0.05,
    rounds: int = 2,
    seed: int = 0,
) -> dict[int, float]:
    """Rows per second for each batch size, the best of ``rounds`` passes over all sizes
    (interleaved, so a passing slowdown of the host does not bend one end of the curve);
    each pass times calls until ``seconds_per_size`` is up, at least one. ``condition(rows)``
    gives a valid condition input (class labels or hidden states) for that many rows."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for size in sizes:
        x = rng.standard_normal((size, *sample_shape), dtype=np.float32)
        t = rng.integers(0, 1000, size).astype(np.float32)
        c = condition(size)
        inputs[size] = (x, t, c)
        run(x, t, c)  # warm-up: first-call allocations
    curve = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size, (x, t, c) in inputs.items():
            calls, started = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - started < seconds_per_size:
                run(x, t, c)
                calls += 1
            curve[size] = max(curve[size], size * calls / (time.perf_counter() - started))
    return curve
