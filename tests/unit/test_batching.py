"""Batching policy (pure: sizes and times in, decisions out)."""

from __future__ import annotations

from workers.batching import BatchPolicy, admit, free_rows, keep_gathering

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
