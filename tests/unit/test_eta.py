"""ETAs: the worker's pace meter and the estimate of a job from its model's backlog."""

from __future__ import annotations

import pytest

from diffq.eta import IDLE_GAP_SECONDS, SMOOTHING, Backlog, Estimate, Pace, PaceMeter, estimate
from diffq.jobs import Job, JobRequest, Status


def job(status: Status = Status.QUEUED, steps: int = 10, step: int = 0, guided: bool = True) -> Job:
    req = JobRequest("m", 1, 1, steps, "ddim", 2.0 if guided else 1.0, 1)
    return Job("j", req, status, created_at=0.0, step=step)


def test_the_meter_times_steps_start_to_start_and_skips_idle_gaps() -> None:
    meter = PaceMeter()
    assert meter.close_window() is None  # nothing stepped yet
    for i in range(5):  # 4 rows per step, a step every 0.1 s
        meter.step_started(10.0 + 0.1 * i, 4)
    meter.step_started(10.4 + IDLE_GAP_SECONDS + 5, 4)  # after an idle spell: not a step's time
    pace = meter.close_window()
    assert pace is not None
    assert pace.step_seconds == pytest.approx(0.1) and pace.rows_per_second == pytest.approx(40.0)


def test_the_meter_smooths_windows_and_keeps_its_pace_while_idle() -> None:
    meter = PaceMeter()
    meter.step_started(0.0, 10)
    meter.step_started(0.5, 10)  # 20 rows/s, 0.5 s steps
    first = meter.close_window()
    meter.step_started(1.0, 10)
    meter.step_started(1.1, 10)  # the step of 0.5..1.0 (10 rows), then 1.0..1.1 (10 rows)
    second = meter.close_window()
    assert first == Pace(20.0, 0.5)
    assert second is not None
    window_rate, window_step = 20 / 0.6, 0.3
    assert second.rows_per_second == pytest.approx(SMOOTHING * window_rate + (1 - SMOOTHING) * 20)
    assert second.step_seconds == pytest.approx(SMOOTHING * window_step + (1 - SMOOTHING) * 0.5)
    assert meter.close_window() == second  # idle: what it can do, not what it did


def test_a_queued_job_waits_for_the_work_ahead_then_takes_its_steps() -> None:
    # 5 waiting jobs of 40 evaluations on average; two workers of 50 rows/s, 0.2 s steps.
    backlog = Backlog(depth=5, evaluations=200, paces=(Pace(50, 0.2), Pace(50, 0.2)))
    first = estimate(job(), 1, backlog, now=100.0)
    third = estimate(job(), 3, backlog, now=100.0)
    assert first == Estimate(100.0, 102.0)  # nothing ahead: starts now, 10 steps of 0.2 s
    assert third == Estimate(pytest.approx(100.8), pytest.approx(102.8))  # 2 x 40 / 100 rows/s


def test_a_running_job_has_its_remaining_steps_left() -> None:
    backlog = Backlog(depth=0, evaluations=0, paces=(Pace(50, 0.2), Pace(50, 0.4), Pace(50, 0.3)))
    got = estimate(job(Status.RUNNING, steps=10, step=4), None, backlog, now=10.0)
    assert got == Estimate(None, pytest.approx(10.0 + 6 * 0.3))  # the median step time


def test_no_estimate_for_a_terminal_job_or_without_a_pace() -> None:
    backlog = Backlog(depth=1, evaluations=20, paces=(Pace(50, 0.2),))
    assert estimate(job(Status.SUCCEEDED), None, backlog, now=0.0) is None
    assert estimate(job(), 1, Backlog(1, 20, ()), now=0.0) is None
    assert estimate(job(), 1, Backlog(1, 20, (Pace(0.0, 0.2),)), now=0.0) is None


def test_an_empty_queue_takes_the_job_own_work_as_the_mean() -> None:
    backlog = Backlog(depth=0, evaluations=0, paces=(Pace(10, 0.1),))
    got = estimate(job(steps=5, guided=False), 2, backlog, now=0.0)  # 5 evaluations ahead
    assert got == Estimate(pytest.approx(0.5), pytest.approx(1.0))
