"""Batching policy: which claimed jobs join the running set, and when to start stepping.

Pure: takes sizes and times as arguments, never sleeps or touches the queue. The worker keeps
a running set of jobs; every step is one denoiser call over all their rows, and new jobs join
between steps while rows are free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    max_rows: int  # denoiser rows per call
    max_wait_s: float  # how long an idle worker gathers jobs before its first step


def admit(policy: BatchPolicy, active_rows: int, waiting_rows: Sequence[int]) -> int:
    """How many of the waiting jobs (in arrival order) join now.

    First come, first served: stop at the first job that does not fit, so a big job is never
    starved by smaller ones behind it. A job bigger than the whole budget runs alone.
    """
    n = 0
    rows = active_rows
    for size in waiting_rows:
        if rows + size > policy.max_rows and not (rows == 0 and n == 0):
            break
        rows += size
        n += 1
    return n


def free_rows(policy: BatchPolicy, active_rows: int) -> int:
    return max(0, policy.max_rows - active_rows)


def keep_gathering(policy: BatchPolicy, now: float, gather_started: float, rows: int) -> bool:
    """An idle worker that has some work waits for more until full or ``max_wait_s`` has passed."""
    return rows < policy.max_rows and now - gather_started < policy.max_wait_s


def tick_rows(curve: Mapping[int, float], gain: float = 0.1) -> int:
    """The rows per denoiser call to aim for, from a measured throughput curve.

    ``curve`` maps batch size (rows) to throughput (rows per second). Every extra row in a
    call makes each image in it wait longer per step, and buys throughput only where the
    curve still rises: the tick is the smallest batch that no bigger one beats by more than
    ``gain``. On a GPU the curve climbs for hundreds of rows and the tick is large; on a CPU
    it is nearly flat past a few rows, and sharing calls among many jobs would only slow
    each of them down (measured in BENCHMARKS.md).
    """
    if not curve:
        raise ValueError("an empty throughput curve")
    if gain < 0:
        raise ValueError(f"gain must be >= 0, got {gain}")
    sizes = sorted(curve)
    for i, size in enumerate(sizes):
        if all(curve[bigger] <= (1 + gain) * curve[size] for bigger in sizes[i + 1 :]):
            return size
    return sizes[-1]  # unreachable: the largest size always qualifies
