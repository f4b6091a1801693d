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


def tick_rows(curve: Mapping[int, float], fraction: float = 0.95) -> int:
    """The rows per denoiser call to aim for, from a measured throughput curve.

    ``curve`` maps batch size (rows) to throughput (rows per second). Past the knee, bigger
    calls buy little throughput but every image waits longer per step, so the tick is the
    smallest batch that reaches ``fraction`` of the best throughput measured.
    """
    if not curve:
        raise ValueError("an empty throughput curve")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= fraction * best)
