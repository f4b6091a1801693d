"""The engine's IOBinding and bucketed (CUDA graph) paths, run on CPU with the shipped model.

On CPU the bucketed path runs without capture (``Engine.bucketed(..., capture=False)``): the
same padding, fixed buffers, ``update_inplace`` and bindings as on CUDA, only without the
``enable_cuda_graph`` provider option, which needs a GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bench.gpu import invariance
from model_store.store import ModelStore
from workers.buckets import run_bucketed
from workers.engine import CPU, Engine, EngineError, EngineOptions

STORED = ModelStore().get("mnist-cfg-unet")
M = STORED.manifest


def one_thread(io_binding: bool | None = None, cuda_graph: bool = False) -> EngineOptions:
    """CPU options with one thread: the test machine's cores are shared."""
    return EngineOptions(providers=(CPU,), intra_op_threads=1, io_binding=io_binding, cuda_graph=cuda_graph)


@pytest.fixture(scope="module")
def plain() -> Engine:
    return Engine(STORED.verify(), M, one_thread())


@pytest.fixture(scope="module")
def bound() -> Engine:
    return Engine(STORED.verify(), M, one_thread(io_binding=True))


def batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + rows)
    return (
        rng.standard_normal((rows, *M.image_shape)).astype(np.float32),
        (rng.random(rows) * 999).astype(np.float32),
        rng.integers(0, M.null_class + 1, rows),
    )


def test_cpu_defaults_to_the_plain_path(plain: Engine) -> None:
    assert (plain.device, plain.io_binding, plain.cuda_graph) == ("cpu", False, False)


def test_io_binding_is_bitwise_identical_to_the_plain_path(plain: Engine, bound: Engine) -> None:
    assert bound.io_binding
    # Grow and shrink, so the reused output buffer is rebound at other sizes and regrown.
    earlier = []
    for rows in (1, 3, 17, 2, 64, 5):
        x, t, y = batch(rows)
        got = bound.run(x, t, y)
        want = plain.run(x, t, y)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert got.tobytes() == want.tobytes(), rows
        earlier.append((got, got.copy()))
    # Outputs are copies: later calls (which reuse the buffer) never change an earlier result.
    assert all(np.array_equal(a, b) for a, b in earlier)
    assert bound.stats.calls == 6 and bound.stats.rows == 1 + 3 + 17 + 2 + 64 + 5


def test_cuda_graph_without_cuda_falls_back_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="diffq.engine"):
        engine = Engine(STORED.verify(), M, one_thread(cuda_graph=True))
    assert not engine.cuda_graph
    assert any("cuda_graph requested" in r.getMessage() for r in caplog.records)
    x, t, y = batch(3)
    assert engine.run(x, t, y).shape == x.shape
    with pytest.raises(EngineError, match="CUDA graphs need the CUDA provider"):
        engine.bucketed((1, 2, 4), capture=True)


@pytest.mark.parametrize("rows", [1, 3, 5, 8, 13])
def test_padded_rows_equal_the_unpadded_ones(plain: Engine, rows: int) -> None:
    x, t, y = batch(rows, seed=7)
    want = plain.run(x, t, y)
    for mode in ("edge", "zeros"):
        got = run_bucketed(plain.run, (1, 2, 4, 8, 16), x, t, y, mode=mode)
        assert got.shape == want.shape
        for i in range(rows):
            assert got[i].tobytes() == want[i].tobytes(), (rows, mode, i)


def test_bucket_sessions_on_cpu_match_the_plain_path(plain: Engine, bound: Engine) -> None:
    bucketed = bound.bucketed((2, 4, 8), capture=False)
    assert bucketed.built == []  # sessions are made on a bucket's first call
    for rows in (3, 1, 8, 4, 11, 2):  # 11 is above the largest bucket: runs unpadded
        x, t, y = batch(rows, seed=3)
        got = bucketed.run(x, t, y)
        want = plain.run(x, t, y)
        assert got.shape == want.shape
        for i in range(rows):
            assert got[i].tobytes() == want[i].tobytes(), (rows, i)
    assert bucketed.built == [2, 4, 8]


def test_padded_engine_matches_the_plain_path_and_warms_every_bucket(plain: Engine) -> None:
    """Padding without graphs (the CUDA default), forced on here: rows equal the unpadded ones;
    warm_up runs each bucket once without counting as calls; use_buckets switches the set."""
    engine = Engine(
        STORED.verify(),
        M,
        EngineOptions(providers=(CPU,), intra_op_threads=1, pad_to_buckets=True, buckets=(2, 8)),
    )
    assert engine.padded and engine.buckets == (2, 8)
    assert engine.warm_up() > 0 and engine.stats.calls == 0
    for rows in (1, 3, 8, 9):  # 9 is above the largest bucket: unpadded
        x, t, y = batch(rows, seed=11)
        assert engine.run(x, t, y).tobytes() == plain.run(x, t, y).tobytes(), rows
    assert engine.stats.rows == 1 + 3 + 8 + 9  # real rows, not padded ones
    engine.use_buckets((16,))
    x, t, y = batch(5, seed=12)
    assert engine.run(x, t, y).tobytes() == plain.run(x, t, y).tobytes()


def test_unpadded_engine_does_not_warm_up(plain: Engine) -> None:
    assert not plain.padded
    calls = plain.stats.calls
    plain.warm_up()
    assert plain.stats.calls == calls


def test_fp16_variant_runs_the_same_contract_within_fp16_precision(plain: Engine) -> None:
    """The fp16 file takes and returns float32 (it casts inside) and agrees with fp32 to the
    error its export recorded; on CPU its rows do not depend on the batch either."""
    half = Engine(STORED.verify("fp16"), M, one_thread())
    spec = M.variants["fp16"]
    x, t, y = batch(16, seed=5)
    want, got = plain.run(x, t, y), half.run(x, t, y)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert 0 < err <= 2 * spec.max_relative_error  # fp16 arithmetic, not the fp32 file again
    alone = half.run(x[:3], t[:3], y[:3])
    assert alone.tobytes() == got[:3].tobytes()


def test_the_gpu_bench_invariance_check_tells_both_ways(plain: Engine) -> None:
    """bench.gpu's check (run on the GPU machine) passes the CPU engine, whose rows do not
    depend on their batch, and fails a denoiser whose rows do."""
    assert invariance(plain.run, STORED) == (True, 0.0)

    def batch_dependent(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return plain.run(x, t, y) + np.float32(1e-3) * (len(t) > 1)

    ok, diff = invariance(batch_dependent, STORED)
    assert not ok and diff > 0
