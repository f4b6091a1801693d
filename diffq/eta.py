"""Estimated start and finish times (ETAs) of queued and running jobs. Pure.

A job waits for the work ahead of it in its model's queue (the jobs at its priority and above
before it in the fair order, at the queue's mean work per job) to drain at the model's live
workers' combined pace with full batches, then takes its steps at their step time (every
running job steps once per step of the running set; full-batch steps while a queue remains). A
running job has its remaining steps left, at the step time of now. Jobs submitted later
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

SMOOTHING = 0.3  # the weight of the newest window in the fit of step time on rows
RECENT = 0.7  # its weight in the pace as it went (the step time of now moves with the load)
IDLE_GAP_SECONDS = 1.0  # a longer gap between two steps is idle time, not a step


@dataclass(frozen=True)
class Pace:
    rows_per_second: float  # denoiser row-evaluations per second while busy, as it went
    step_seconds: float  # one step of the running set, start to start, as it went
    full_rows: int = 0  # rows per step with a full batch (the budget under a backlog)
    fixed_seconds: float = 0.0  # the fit of a step's time: fixed + per_row x rows
    per_row_seconds: float = 0.0  # 0: no fit (too few steps, or all of one size)

    def step_at(self, rows: int) -> float:
        """A step of ``rows`` rows: the fit, or the step time as it went."""
        if self.per_row_seconds > 0:
            return self.fixed_seconds + self.per_row_seconds * max(1, rows)
        return self.step_seconds

    @property
    def full_step_seconds(self) -> float:
        return self.step_at(self.full_rows) if self.full_rows else self.step_seconds

    @property
    def full_rows_per_second(self) -> float:
        """How fast it drains a queue: with a full batch, else as it went."""
        if self.per_row_seconds > 0 and self.full_rows:
            return self.full_rows / self.full_step_seconds
        return self.rows_per_second


@dataclass
class PaceMeter:
    """A step's time is close to affine in its rows (a fixed cost, then a cost per row), so the
    meter fits that line over the steps it timed, each window's sums decayed by ``SMOOTHING``,
    and reads off the time of a step of ``full_rows`` (the budget under a backlog): what a
    queue gets once the batch grows, even if only lighter steps have been seen."""

    full_rows: int = 0
    pace: Pace | None = None
    # this window's steps: count, rows, seconds, and the sums of the fit
    steps: int = 0
    rows: float = 0.0
    seconds: float = 0.0
    _sums: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # n, r, t, rr, rt
    _last_start: float | None = None
    _last_rows: int = 0

    def step_started(self, now: float, rows: int) -> None:
        """A step of ``rows`` rows starts at ``now`` (monotonic seconds)."""
        last = self._last_start
        if last is not None and 0 < now - last <= IDLE_GAP_SECONDS:
            r, t = float(self._last_rows), now - last
            self.steps += 1
            self.rows += r
            self.seconds += t
            n, sr, st, srr, srt = self._sums
            self._sums = (n + 1, sr + r, st + t, srr + r * r, srt + r * t)
        self._last_start, self._last_rows = now, rows

    def close_window(self) -> Pace | None:
        """The pace with this window's steps folded in (None before any step was timed)."""
        if self.steps and self.seconds > 0:
            rate, step = self.rows / self.seconds, self.seconds / self.steps
            if self.pace is not None:
                rate = RECENT * rate + (1 - RECENT) * self.pace.rows_per_second
                step = RECENT * step + (1 - RECENT) * self.pace.step_seconds
            fixed, per_row = self.fit()
            self.pace = Pace(rate, step, self.full_rows, fixed, per_row)
            self._sums = tuple(x * (1 - SMOOTHING) for x in self._sums)  # type: ignore[assignment]
        self.rows, self.seconds, self.steps = 0.0, 0.0, 0
        return self.pace

    def fit(self) -> tuple[float, float]:
        """(fixed, per-row) seconds of the line through the steps timed; (0, 0) without one to
        go by: too few steps, all of one size, or a time that does not grow with rows."""
        n, sr, st, srr, srt = self._sums
        spread = n * srr - sr * sr
        if n < 2 or spread <= 1e-9 * max(1.0, n * srr):
            return 0.0, 0.0
        per_row = (n * srt - sr * st) / spread
        if per_row <= 0:
            return 0.0, 0.0
        return max(0.0, (st - per_row * sr) / n), per_row


@dataclass(frozen=True)
class Backlog:
    """What the estimates of a model's jobs read: its waiting jobs and its live workers' paces."""

    depth: int  # jobs waiting for a worker, all priorities
    evaluations: int  # their denoiser row-evaluations
    paces: tuple[Pace, ...]  # one per live worker that has stepped

    @property
    def rows_per_second(self) -> float:
        """How fast the live workers drain the queue together."""
        return sum(p.full_rows_per_second for p in self.paces)

    @property
    def step_seconds(self) -> float:
        """A step as the workers go now."""
        return statistics.median(p.step_seconds for p in self.paces)

    @property
    def full_step_seconds(self) -> float:
        """A step once the batch is full (under a backlog)."""
        return statistics.median(p.full_step_seconds for p in self.paces)


@dataclass(frozen=True)
class Estimate:
    start_at: float | None  # unix seconds; None once the job has started
    finish_at: float


MIN_SAMPLE = 16  # waiting jobs whose mean work stands for the work ahead; fewer: ``mean_work``


def estimate(
    job: Job, position: int | None, backlog: Backlog, now: float, mean_work: float | None = None
) -> Estimate | None:
    """When ``job`` (queued at 1-based ``position``, or running) should start and finish; None
    for a terminal job, or when no worker has a pace to go by. The work of each job ahead is
    the queue's mean when ``backlog`` holds enough jobs to go by, else ``mean_work`` (the mean of
    recent submissions: a backlog read just before a burst says little of the burst), else the
    job's own."""
    if job.terminal or not backlog.paces or backlog.rows_per_second <= 0:
        return None
    steps = job.request.steps
    if job.status == Status.RUNNING:
        return Estimate(None, now + max(0, steps - job.step) * backlog.step_seconds)
    ahead = max(0, (position or 1) - 1)
    if ahead == 0:  # next in line: it joins the running set at the next claim
        return Estimate(now, now + steps * backlog.step_seconds)
    if backlog.depth >= MIN_SAMPLE:
        per_job = backlog.evaluations / backlog.depth
    else:
        per_job = mean_work or job.request.evaluations
    start = now + ahead * per_job / backlog.rows_per_second
    return Estimate(start, start + steps * backlog.full_step_seconds)  # a queue behind it: full steps
