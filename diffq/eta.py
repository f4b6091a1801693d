"""Estimated start and finish times (ETAs) of queued and running jobs. Pure.

A job waits for the work ahead of it in its model's queue (the jobs at its priority and above
before it in the fair order, at the queue's mean work per job) to drain at the model's live
workers' combined pace, then takes its steps at their step time (every running job steps once
per step of the running set). A running job has its remaining steps left. Jobs submitted later
at a higher priority, and the queue's own mix, move the truth away from the estimate;
``make bench`` measures by how much.

Workers measure their pace (``PaceMeter``): each step's rows and the time from its start to
the next step's start (the real cadence: host work, claims and progress writes included, idle
gaps not). At each heartbeat a worker closes the window and publishes its pace, smoothed over
windows so one slow step does not swing every estimate, and kept while it idles (what it can
do, not what it did last).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from diffq.jobs import Job, Status

SMOOTHING = 0.3  # the weight of the newest window
IDLE_GAP_SECONDS = 1.0  # a longer gap between two steps is idle time, not a step


@dataclass(frozen=True)
class Pace:
    rows_per_second: float  # denoiser row-evaluations per second while busy
    step_seconds: float  # one step of the running set, start to start


@dataclass
class PaceMeter:
    rows: int = 0
    seconds: float = 0.0
    steps: int = 0
    pace: Pace | None = None
    _last_start: float | None = None
    _last_rows: int = 0

    def step_started(self, now: float, rows: int) -> None:
        """A step of ``rows`` rows starts at ``now`` (monotonic seconds)."""
        if self._last_start is not None and 0 < now - self._last_start <= IDLE_GAP_SECONDS:
            self.rows += self._last_rows
            self.seconds += now - self._last_start
            self.steps += 1
        self._last_start, self._last_rows = now, rows

    def close_window(self) -> Pace | None:
        """The pace with this window's steps folded in (None before any step was timed)."""
        if self.steps and self.seconds > 0:
            rate, step = self.rows / self.seconds, self.seconds / self.steps
            if self.pace is not None:
                rate = SMOOTHING * rate + (1 - SMOOTHING) * self.pace.rows_per_second
                step = SMOOTHING * step + (1 - SMOOTHING) * self.pace.step_seconds
            self.pace = Pace(rate, step)
        self.rows, self.seconds, self.steps = 0, 0.0, 0
        return self.pace


@dataclass(frozen=True)
class Backlog:
    """What the estimates of a model's jobs read: its waiting jobs and its live workers' paces."""

    depth: int  # jobs waiting for a worker, all priorities
    evaluations: int  # their denoiser row-evaluations
    paces: tuple[Pace, ...]  # one per live worker that has stepped

    @property
    def rows_per_second(self) -> float:
        return sum(p.rows_per_second for p in self.paces)

    @property
    def step_seconds(self) -> float:
        return statistics.median(p.step_seconds for p in self.paces)


@dataclass(frozen=True)
class Estimate:
    start_at: float | None  # unix seconds; None once the job has started
    finish_at: float


def estimate(job: Job, position: int | None, backlog: Backlog, now: float) -> Estimate | None:
    """When ``job`` (queued at 1-based ``position``, or running) should start and finish; None
    for a terminal job, or when no worker has a pace to go by."""
    if job.terminal or not backlog.paces or backlog.rows_per_second <= 0:
        return None
    step = backlog.step_seconds
    steps = job.request.steps
    if job.status == Status.RUNNING:
        return Estimate(None, now + max(0, steps - job.step) * step)
    ahead = max(0, (position or 1) - 1)
    per_job = backlog.evaluations / backlog.depth if backlog.depth else job.request.evaluations
    start = now + ahead * per_job / backlog.rows_per_second
    return Estimate(start, start + steps * step)
