"""ETAs: the worker's pace meter and the estimate of a job from its model's backlog."""

from __future__ import annotations

import pytest

from diffq.eta import IDLE_GAP_SECONDS, RECENT, Backlog, Estimate, Pace, PaceMeter, estimate
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
    assert second.rows_per_second == pytest.approx(RECENT * window_rate + (1 - RECENT) * 20)
    assert second.step_seconds == pytest.approx(RECENT * window_step + (1 - RECENT) * 0.5)
    assert meter.close_window() == second  # idle: what it can do, not what it did


def test_a_queued_job_waits_for_the_work_ahead_then_takes_its_steps() -> None:
    # 20 waiting jobs of 40 evaluations on average; two workers of 50 rows/s, 0.2 s steps.
    backlog = Backlog(depth=20, evaluations=800, paces=(Pace(50, 0.2), Pace(50, 0.2)))
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


def test_a_short_queue_takes_recent_submissions_mean_work() -> None:
    # 3 waiting jobs, one of them huge: too few to stand for a burst behind them.
    backlog = Backlog(depth=3, evaluations=3000, paces=(Pace(100, 0.1),))
    got = estimate(job(steps=5), 3, backlog, now=0.0, mean_work=50.0)  # 2 x 50 / 100 rows/s
    assert got is not None and got.start_at == pytest.approx(1.0)


def test_an_empty_queue_takes_the_job_own_work_as_the_mean() -> None:
    backlog = Backlog(depth=0, evaluations=0, paces=(Pace(10, 0.1),))
    got = estimate(job(steps=5, guided=False), 2, backlog, now=0.0)  # 5 evaluations ahead
    assert got == Estimate(pytest.approx(0.5), pytest.approx(1.0))


def test_the_meter_fits_step_time_on_rows_and_reads_off_a_full_batch() -> None:
    meter = PaceMeter(full_rows=32)
    now = 0.0
    for rows in [4, 8, 16, 8, 4, 16, 12]:  # each step takes 10 ms plus 1 ms a row
        meter.step_started(now, rows)
        now += 0.010 + 0.001 * rows
    meter.step_started(now, 4)
    pace = meter.close_window()
    assert pace is not None and pace.full_rows == 32
    assert (pace.fixed_seconds, pace.per_row_seconds) == (pytest.approx(0.010), pytest.approx(0.001))
    assert pace.full_step_seconds == pytest.approx(0.010 + 0.032)
    assert pace.step_at(12) == pytest.approx(0.022)
    assert pace.full_rows_per_second == pytest.approx(32 / 0.042)
    assert pace.full_rows_per_second > pace.rows_per_second  # a full batch drains faster


def test_without_a_spread_of_sizes_the_rate_as_it_went_stands() -> None:
    meter = PaceMeter(full_rows=32)
    for i in range(5):
        meter.step_started(0.1 * i, 8)
    pace = meter.close_window()
    assert pace is not None and pace.per_row_seconds == 0  # no line through one size
    assert pace.full_step_seconds == pace.step_seconds == pytest.approx(0.1)
    assert pace.full_rows_per_second == pace.rows_per_second == pytest.approx(80.0)


def test_a_queue_drains_at_full_batches_and_its_jobs_take_full_steps() -> None:
    # Steps take 40 ms plus 5 ms a row: 0.2 s for a full 32 (160 rows/s); 0.1 s as they go now.
    pace = Pace(40, 0.1, full_rows=32, fixed_seconds=0.04, per_row_seconds=0.005)
    backlog = Backlog(depth=16, evaluations=1280, paces=(pace,))
    got = estimate(job(steps=10), 3, backlog, now=0.0)  # 2 jobs of 80 ahead: 160 / 160 rows/s
    assert got == Estimate(pytest.approx(1.0), pytest.approx(1.0 + 10 * 0.2))
    running = estimate(job(Status.RUNNING, steps=10, step=5), None, backlog, now=0.0)
    assert running == Estimate(None, pytest.approx(5 * 0.1))  # steps as they go now
    first = estimate(job(steps=10), 1, backlog, now=0.0)  # nothing ahead: joins them at once
    assert first == Estimate(0.0, pytest.approx(10 * 0.1))
