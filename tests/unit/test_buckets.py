"""Batch buckets for CUDA graphs: the policy and the pad/unpad helpers (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.buckets import (
    bucket_for,
    check_buckets,
    default_buckets,
    pad_rows,
    run_bucketed,
    unpad_rows,
    worker_buckets,
)

BUCKETS = (1, 2, 4, 8, 16)


def test_default_buckets_are_powers_of_two_then_the_max() -> None:
    assert default_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert default_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert default_buckets(1) == (1,)
    with pytest.raises(ValueError, match="at least 1"):
        default_buckets(0)


@pytest.mark.parametrize("bad", [(), (0, 2), (2, 1), (1, 2, 2), (-4,)])
def test_bucket_sizes_must_be_positive_and_increasing(bad: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        check_buckets(bad)


def test_check_buckets_returns_a_tuple() -> None:
    assert check_buckets([1, 3, 9]) == (1, 3, 9)


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (9, 16), (16, 16)])
def test_smallest_bucket_that_holds_the_rows(rows: int, bucket: int) -> None:
    assert bucket_for(rows, BUCKETS) == bucket


def test_above_the_largest_bucket_there_is_none() -> None:
    assert bucket_for(17, BUCKETS) is None
    assert bucket_for(1000, (64,)) is None


@pytest.mark.parametrize("rows", [0, -1])
def test_no_rows_is_an_error(rows: int) -> None:
    with pytest.raises(ValueError, match="no rows"):
        bucket_for(rows, BUCKETS)


def test_pad_with_copies_of_the_last_row() -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded = pad_rows(a, 5)
    assert padded.shape == (5, 2) and padded.dtype == a.dtype
    assert np.array_equal(padded[:3], a)
    assert np.array_equal(padded[3:], [[4, 5], [4, 5]])


def test_pad_with_zeros() -> None:
    labels = np.array([7, 3], dtype=np.int64)
    padded = pad_rows(labels, 4, mode="zeros")
    assert padded.dtype == np.int64 and padded.tolist() == [7, 3, 0, 0]


def test_exact_fit_is_not_padded_or_copied() -> None:
    a = np.ones((4, 1, 2, 2), np.float32)
    assert pad_rows(a, 4) is a


def test_pad_refuses_empty_and_shrinking() -> None:
    with pytest.raises(ValueError, match="empty"):
        pad_rows(np.zeros((0, 3)), 4)
    with pytest.raises(ValueError, match="down"):
        pad_rows(np.zeros((5, 3)), 4)


def test_unpad_keeps_the_leading_rows() -> None:
    out = np.arange(8).reshape(4, 2)
    assert unpad_rows(out, 3).tolist() == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="fewer"):
        unpad_rows(out, 5)


calls: list[int] = []


def _rowwise(sample: np.ndarray, timestep: np.ndarray, class_label: np.ndarray) -> np.ndarray:
    """A stand-in denoiser whose rows are independent, recording the batch sizes it sees."""
    calls.append(len(timestep))
    return sample * timestep[:, None, None, None] + class_label[:, None, None, None]


@pytest.mark.parametrize(("rows", "seen"), [(1, 1), (3, 4), (8, 8), (13, 16)])
def test_run_bucketed_pads_the_call_and_slices_the_output(rows: int, seen: int) -> None:
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 1, 2, 2)).astype(np.float32)
    t = rng.random(rows).astype(np.float32)
    y = rng.integers(0, 10, rows)
    calls.clear()
    out = run_bucketed(_rowwise, BUCKETS, x, t, y)
    assert calls == [seen]
    assert np.array_equal(out, _rowwise(x, t, y))


def test_run_bucketed_sends_oversize_calls_unpadded_to_the_fallback() -> None:
    x, t, y = np.ones((20, 1, 2, 2), np.float32), np.ones(20, np.float32), np.zeros(20, np.int64)
    fallback_calls: list[int] = []

    def fallback(sample: np.ndarray, timestep: np.ndarray, class_label: np.ndarray) -> np.ndarray:
        fallback_calls.append(len(timestep))
        return sample

    calls.clear()
    assert run_bucketed(_rowwise, BUCKETS, x, t, y, unbucketed=fallback).shape == x.shape
    assert (calls, fallback_calls) == ([], [20])
    run_bucketed(_rowwise, BUCKETS, x, t, y)  # no fallback given: the same run, unpadded
    assert calls == [20]


def test_worker_buckets_by_mode_and_device() -> None:
    assert worker_buckets("pow2", 48, "cuda") == (1, 2, 4, 8, 16, 32, 48)
    assert worker_buckets("fixed", 48, "cpu") == (48,)
    # auto: one shape on CUDA (its results vary with the batch size), powers of two elsewhere
    assert worker_buckets("auto", 1024, "cuda") == (1024,)
    assert worker_buckets("auto", 8, "cpu") == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="unknown bucket mode"):
        worker_buckets("sometimes", 8, "cpu")
