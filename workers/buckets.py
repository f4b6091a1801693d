"""Batch buckets: the few fixed batch sizes a CUDA graph engine runs at.

A captured CUDA graph replays fixed shapes, so an engine that uses graphs keeps one per bucket
and pads each call up to the smallest bucket that holds it, then drops the padded rows from
the output. Pure numpy: no onnxruntime, no device, tested on its own.

Policy for the edges:

- a row count that fits a bucket exactly is not padded;
- a row count above the largest bucket has no bucket (``bucket_for`` returns None) and runs
  unpadded on the ordinary, uncaptured path: the worker admits a single job bigger than its
  tick (``workers.batching.admit``), and such a call must still run;
- zero rows is an error: there is nothing to run, and the denoiser rejects an empty batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import numpy as np

ModelFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
PadMode = Literal["edge", "zeros"]


def default_buckets(max_rows: int) -> tuple[int, ...]:
    """Powers of two below ``max_rows``, then ``max_rows`` itself (so every call up to the tick
    has a bucket, also when the tick is not a power of two): 48 -> (1, 2, 4, 8, 16, 32, 48)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    sizes = []
    size = 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
    sizes.append(max_rows)
    return tuple(sizes)


def worker_buckets(mode: str, max_rows: int, device: str) -> tuple[int, ...]:
    """A worker's buckets for ``mode``:

    - ``pow2``: ``default_buckets(max_rows)``, the least padding;
    - ``fixed``: ``max_rows`` alone, one shape for every call, so no row's result can depend on
      the size of the batch it ran in;
    - ``auto``: ``fixed`` on CUDA, ``pow2`` elsewhere. Measured on an H200, the same rows came
      out up to 3e-3 apart at different batch sizes (cuDNN picks algorithms per shape) and
      bit-identical at one fixed size; on CPU onnxruntime's rows are identical at any size.
    """
    mode = resolve_mode(mode, device)
    if mode == "fixed":
        return check_buckets((max_rows,))
    if mode == "pow2":
        return default_buckets(max_rows)
    raise ValueError(f"unknown bucket mode {mode!r} (auto, pow2 or fixed)")


def resolve_mode(mode: str, device: str) -> str:
    """``auto`` made concrete for ``device`` (see ``worker_buckets``); other modes as they are."""
    if mode == "auto":
        return "fixed" if device == "cuda" else "pow2"
    return mode


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """The buckets as a tuple, or ValueError unless they are positive and strictly increasing."""
    sizes = tuple(buckets)
    if not sizes:
        raise ValueError("no bucket sizes given")
    if sizes[0] < 1 or any(a >= b for a, b in pairwise(sizes)):
        raise ValueError(f"bucket sizes must be positive and strictly increasing, got {sizes}")
    return sizes


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds ``rows``; None when ``rows`` is above the largest one.

    ``buckets`` must be sorted ascending (see ``check_buckets``).
    """
    if rows < 1:
        raise ValueError(f"no rows to run (got {rows})")
    for size in buckets:
        if size >= rows:
            return size
    return None


def pad_rows(array: np.ndarray, rows: int, mode: PadMode = "edge") -> np.ndarray:
    """``array`` grown along its first axis to ``rows``: the new rows copy the last real row
    (``edge``, inputs the model has seen, so no odd values run through it) or are zeros."""
    have = len(array)
    if have < 1:
        raise ValueError("cannot pad an empty batch")
    if rows < have:
        raise ValueError(f"cannot pad {have} rows down to {rows}")
    if rows == have:
        return array
    if mode == "edge":
        filler = np.repeat(array[-1:], rows - have, axis=0)
    else:
        filler = np.zeros((rows - have, *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, filler])


def unpad_rows(output: np.ndarray, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a padded output: the ones that belong to real inputs."""
    if rows > len(output):
        raise ValueError(f"output has {len(output)} rows, fewer than the {rows} asked for")
    return output[:rows]


def run_bucketed(
    run: ModelFn,
    buckets: Sequence[int],
    sample: np.ndarray,
    timestep: np.ndarray,
    class_label: np.ndarray,
    unbucketed: ModelFn | None = None,
    mode: PadMode = "edge",
) -> np.ndarray:
    """One denoiser call padded to its bucket: pad the three inputs, run, slice the output back.

    Rows above the largest bucket go to ``unbucketed`` (default: ``run``) as they are. The
    denoiser treats rows independently, so the real rows' outputs do not depend on the padding.
    """
    rows = len(timestep)
    bucket = bucket_for(rows, buckets)
    if bucket is None:
        return (unbucketed or run)(sample, timestep, class_label)
    padded = (pad_rows(a, bucket, mode) for a in (sample, timestep, class_label))
    return unpad_rows(run(*padded), rows)
