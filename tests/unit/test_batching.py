"""Batching policy (pure: sizes and times in, decisions out)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workers.batching import (
    BatchPolicy,
    admit,
    best_rows,
    free_rows,
    is_backlog,
    keep_gathering,
    steps_until_room,
    tick_rows,
)
from workers.calibration import measure_curve
from workers.worker import claim_count

P = BatchPolicy(max_rows=16, max_wait_s=0.05)


def test_admits_in_order_until_full() -> None:
    assert admit(P, 0, [4, 4, 4, 4, 4]) == 4
    assert admit(P, 10, [4, 2]) == 2  # exactly full
    assert admit(P, 10, [4, 4]) == 1
    assert admit(P, 10, [8, 2]) == 0  # first come first served: a small job never jumps a big one


def test_empty_queue_admits_nothing() -> None:
    assert admit(P, 0, []) == 0
    assert admit(P, 16, [1]) == 0


def test_oversized_job_runs_alone_when_idle() -> None:
    assert admit(P, 0, [32, 1]) == 1
    assert admit(P, 1, [32]) == 0


def test_free_rows() -> None:
    assert free_rows(P, 0) == 16 and free_rows(P, 20) == 0


def test_a_backlog_budget_applies_only_under_a_backlog() -> None:
    adaptive = BatchPolicy(max_rows=4, max_wait_s=0.0, backlog_rows=16)
    assert adaptive.adaptive and adaptive.rows() == 4 and adaptive.rows(backlog=True) == 16
    assert admit(adaptive, 0, [2] * 10) == 2
    assert admit(adaptive, 0, [2] * 10, backlog=True) == 8
    assert free_rows(adaptive, 6) == 0 and free_rows(adaptive, 6, backlog=True) == 10
    assert not P.adaptive and P.rows(backlog=True) == 16  # no backlog size: the tick always
    assert BatchPolicy(8, 0.0, backlog_rows=4).rows(backlog=True) == 8  # never below the tick


def test_best_rows_is_the_smallest_batch_near_the_best_throughput() -> None:
    cpu = {1: 269.0, 4: 447.0, 16: 580.0, 32: 541.0, 64: 632.0, 128: 561.0, 256: 497.0}
    assert best_rows(cpu) == 64  # 580 is 8% below the best: not close enough
    assert best_rows(cpu, tolerance=0.1) == 16
    assert best_rows(cpu, tolerance=0.0) == 64
    gpu = {1: 1588.0, 8: 10182.0, 64: 49606.0, 256: 95957.0, 1024: 111764.0, 2048: 111794.0}
    assert best_rows(gpu) == 1024  # 2048 buys 0.03% more
    assert tick_rows(gpu) == 1024 and tick_rows(cpu) == 16  # the light-load rule, for contrast
    with pytest.raises(ValueError):
        best_rows({})
    with pytest.raises(ValueError):
        best_rows(cpu, tolerance=1.0)


def test_gathering_stops_when_full_or_timed_out() -> None:
    assert keep_gathering(P, now=1.01, gather_started=1.0, rows=4)
    assert not keep_gathering(P, now=1.06, gather_started=1.0, rows=4)
    assert not keep_gathering(P, now=1.01, gather_started=1.0, rows=16)


def test_tick_is_the_smallest_batch_no_bigger_one_beats_by_much() -> None:
    # A CPU-like curve: rising to a plateau past 16 rows, a dip at the end.
    cpu = {1: 380.0, 2: 470.0, 4: 530.0, 8: 560.0, 16: 590.0, 32: 610.0, 64: 600.0, 128: 628.0, 256: 560.0}
    assert tick_rows(cpu) == 16  # 628 <= 1.1 x 590: nothing bigger is 10% faster
    assert tick_rows(cpu, gain=0.15) == 8
    assert tick_rows(cpu, gain=0.0) == 128  # the best one
    assert tick_rows(cpu, gain=0.5) == 2
    # A GPU-like curve: throughput doubles with the batch until 256 rows.
    gpu = {1: 1e3, 2: 2e3, 4: 4e3, 16: 1.6e4, 64: 6.4e4, 256: 2.4e5, 512: 2.5e5}
    assert tick_rows(gpu) == 256
    assert tick_rows({8: 100.0}) == 8
    with pytest.raises(ValueError):
        tick_rows({})
    with pytest.raises(ValueError):
        tick_rows(cpu, gain=-1)


def test_measured_curve_of_a_stub_engine_finds_its_knee() -> None:
    # Stub denoiser (the test is about the policy): 2 ms per call plus 0.05 ms per row, so
    # throughput saturates near 1 / 0.05 ms = 20,000 rows/s once calls are big.
    def run(x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        time.sleep(0.002 + 0.00005 * len(t))
        return x

    labels = lambda n: np.zeros(n, dtype=np.int64)  # noqa: E731
    curve = measure_curve(run, (1, 4, 4), labels, sizes=(1, 8, 64, 512), seconds_per_size=0.01, rounds=2)
    assert list(curve) == [1, 8, 64, 512]
    assert curve[1] < curve[8] < curve[64] < curve[512]
    assert tick_rows(curve, gain=1.0) == 64  # 64 rows: ~12,000 rows/s; 512: ~19,000, under 2x


def test_claims_ask_for_what_the_free_rows_could_run() -> None:
    assert [claim_count(free) for free in (1, 2, 3, 10, 128, 129, 4096)] == [1, 1, 1, 5, 64, 64, 64]


def test_a_backlog_is_more_waiting_work_than_running_work_or_a_long_wait_for_room() -> None:
    policy = BatchPolicy(max_rows=16, max_wait_s=0.0, backlog_rows=32, patience_steps=16)
    # A job or two arriving while a batch runs: less work waits than the batch has left, and
    # room frees up within a few steps. At light load that is no backlog.
    assert not is_backlog(policy, waiting_evaluations=54, running_evaluations=200, steps_until_room=3)
    # A burst: more waits than runs.
    assert is_backlog(policy, waiting_evaluations=201, running_evaluations=200, steps_until_room=3)
    # A long job holds the tick: little waits, but it would wait for hundreds of steps.
    assert is_backlog(policy, waiting_evaluations=16, running_evaluations=790, steps_until_room=395)
    assert not is_backlog(policy, waiting_evaluations=16, running_evaluations=790, steps_until_room=16)
    # Nothing waits, or no backlog size to grow to: never.
    assert not is_backlog(policy, waiting_evaluations=0, running_evaluations=0, steps_until_room=0)
    fixed = BatchPolicy(max_rows=16, max_wait_s=0.0)
    assert not is_backlog(fixed, waiting_evaluations=10_000, running_evaluations=0, steps_until_room=999)


def test_steps_until_room_counts_the_steps_until_enough_running_jobs_finish() -> None:
    # (rows per step, steps left) of the running jobs; a budget of 8 rows.
    running = [(2, 5), (4, 1), (2, 9)]
    assert steps_until_room(8, running, rows=1) == 1  # the 4-row job finishes after one step
    assert steps_until_room(8, running, rows=4) == 1
    assert steps_until_room(8, running, rows=6) == 5  # then the 2-row job with 5 steps left
    assert steps_until_room(8, running, rows=8) == 9  # everything must finish
    assert steps_until_room(8, running, rows=20) == 9  # bigger than the budget: runs alone, later
    assert steps_until_room(8, [(2, 5)], rows=6) == 0  # it fits now
    assert steps_until_room(8, [], rows=8) == 0
    # Over the budget (the batch grew under a backlog and the budget fell back): the extra
    # rows must finish too before anything joins: here every job, then two of the three.
    assert steps_until_room(2, [(2, 3), (2, 7), (2, 4)], rows=1) == 7
    assert steps_until_room(4, [(2, 3), (2, 7), (2, 4)], rows=2) == 4
