"""Batching policy: which claimed jobs join the running set, and when to start stepping.

Pure: takes sizes and times as arguments, never sleeps or touches the queue. The worker keeps
a running set of jobs; every step is one denoiser call over all their rows, and new jobs join
between steps while rows are free.

Adaptive batching: the row budget has two sizes, both read off the engine's measured curve.
At light load it is the latency-optimal tick (``tick_rows``): a bigger call would make every
image in it wait longer per step for little extra throughput. Under a backlog only throughput
counts, and the budget grows to the throughput-optimal size (``best_rows``); it falls back
once the queue is empty, as the running jobs finish. A backlog is more than a job or two
waiting between arrivals (at 80% load the queue is rarely empty, and growing the batch then
only slows every job in it): more work waits than the running jobs have left, or the next
job would wait more than ``patience_steps`` steps for room at the tick (a long job holding it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    max_rows: int  # denoiser rows per call at light load (the latency-optimal tick)
    max_wait_s: float  # how long an idle worker gathers jobs before its first step
    backlog_rows: int = 0  # rows per call under a backlog; 0: max_rows
    patience_steps: int = 16  # steps a waiting job may wait for room at the tick before it grows

    def rows(self, backlog: bool = False) -> int:
        """The row budget: the throughput-optimal size under a backlog, else the tick."""
        return max(self.max_rows, self.backlog_rows) if backlog else self.max_rows

    @property
    def adaptive(self) -> bool:
        """Does a backlog change the budget at all?"""
        return self.backlog_rows > self.max_rows


def admit(policy: BatchPolicy, active_rows: int, waiting_rows: Sequence[int], backlog: bool = False) -> int:
    """How many of the waiting jobs (in arrival order) join now.

    First come, first served: stop at the first job that does not fit, so a big job is never
    starved by smaller ones behind it. A job bigger than the whole budget runs alone.
    """
    n = 0
    rows = active_rows
    budget = policy.rows(backlog)
    for size in waiting_rows:
        if rows + size > budget and not (rows == 0 and n == 0):
            break
        rows += size
        n += 1
    return n


def is_backlog(
    policy: BatchPolicy, waiting_evaluations: int, running_evaluations: int, steps_until_room: int
) -> bool:
    """Whether work waiting (denoiser evaluations queued or claimed, not started) is a backlog
    for a worker at its light-load tick: more of it than the running jobs have left to compute,
    or a next job that would wait more than ``patience_steps`` steps for room."""
    if not policy.adaptive or waiting_evaluations <= 0:
        return False
    return waiting_evaluations > running_evaluations or steps_until_room > policy.patience_steps


def steps_until_room(budget: int, running: Sequence[tuple[int, int]], rows: int) -> int:
    """Steps until ``rows`` more rows fit in ``budget``, given the running jobs as (rows per
    step, steps left): the step at which enough of them have finished. A job bigger than the
    budget fits once nothing runs (``admit`` runs it alone)."""
    free = budget - sum(r for r, _ in running)
    if free >= rows:
        return 0
    needed = min(rows, budget) - free  # at most every running row: the loop always returns
    for r, left in sorted(running, key=lambda job: job[1]):
        needed -= r
        if needed <= 0:
            return left
    raise AssertionError("unreachable: once every running job has finished, the budget is free")


def free_rows(policy: BatchPolicy, active_rows: int, backlog: bool = False) -> int:
    return max(0, policy.rows(backlog) - active_rows)


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


def best_rows(curve: Mapping[int, float], tolerance: float = 0.03) -> int:
    """The throughput-optimal rows per call: the smallest batch within ``tolerance`` of the
    curve's best throughput (a bigger call that buys less than that is not worth its memory
    and its latency, and a measured curve is that noisy)."""
    if not curve:
        raise ValueError("an empty throughput curve")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    best = max(curve.values())
    return min(size for size, rate in curve.items() if rate >= (1 - tolerance) * best)
