"""Batching policy (pure: sizes and times in, decisions out)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from workers.batching import BatchPolicy, admit, free_rows, keep_gathering, tick_rows
from workers.calibration import measure_curve

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


def test_gathering_stops_when_full_or_timed_out() -> None:
    assert keep_gathering(P, now=1.01, gather_started=1.0, rows=4)
    assert not keep_gathering(P, now=1.06, gather_started=1.0, rows=4)
    assert not keep_gathering(P, now=1.01, gather_started=1.0, rows=16)


def test_tick_is_the_smallest_batch_near_the_best_throughput() -> None:
    # Rows/s rising to a plateau at 64 rows, as on a CPU; a dip past it (cache effects).
    curve = {1: 40.0, 2: 80.0, 4: 150.0, 8: 260.0, 16: 400.0, 32: 520.0, 64: 600.0, 128: 610.0, 256: 560.0}
    assert tick_rows(curve) == 64  # 600 >= 0.95 x 610
    assert tick_rows(curve, fraction=0.8) == 32
    assert tick_rows(curve, fraction=1.0) == 128
    assert tick_rows(curve, fraction=0.5) == 16
    assert tick_rows({8: 100.0}) == 8
    with pytest.raises(ValueError):
        tick_rows({})
    with pytest.raises(ValueError):
        tick_rows(curve, fraction=0)


def test_measured_curve_of_a_stub_engine_finds_its_knee() -> None:
    # Stub denoiser (the test is about the policy): 2 ms per call plus 0.05 ms per row, so
    # throughput saturates near 1 / 0.05 ms = 20,000 rows/s once calls are big.
    def run(x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        time.sleep(0.002 + 0.00005 * len(t))
        return x

    curve = measure_curve(run, (1, 4, 4), classes=10, sizes=(1, 8, 64, 512), seconds_per_size=0.01, rounds=2)
    assert list(curve) == [1, 8, 64, 512]
    assert curve[1] < curve[8] < curve[64] < curve[512]
    assert tick_rows(curve, fraction=0.5) == 64  # 64 rows: ~12,000 rows/s, over half of ~19,000
