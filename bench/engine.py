"""Figure 1: the denoiser's throughput curve, raw onnxruntime through ``workers.engine.Engine``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.stats import knee
from model_store.store import ModelStore
from workers.batching import best_rows, tick_rows
from workers.engine import Engine, EngineOptions, choose_variant, planned_device

MODEL = "mnist-cfg-unet"
FULL_SIZES = tuple(2**k for k in range(10))  # 1 .. 512
QUICK_SIZES = (1, 4, 16, 64, 256)
GPU_EXTRA_SIZES = (1024, 2048)  # a GPU's curve is still rising at 512


def curve_sizes(device: str, quick: bool) -> tuple[int, ...]:
    return (QUICK_SIZES if quick else FULL_SIZES) + (GPU_EXTRA_SIZES if device == "cuda" else ())


@dataclass(frozen=True)
class EngineCurve:
    threads: int
    providers: list[str]
    variant: str
    rows_per_second: dict[int, float]  # batch size -> best of the rounds
    ms_per_call: dict[int, float]
    knee: int  # smallest batch reaching 95% of the best throughput
    tick_rows_rule: int  # what the worker's own rule (workers.batching.tick_rows) takes from this curve
    best_rows_rule: int = 0  # the worker's backlog size from this curve (workers.batching.best_rows)

    @property
    def best(self) -> tuple[int, float]:
        size = max(self.rows_per_second, key=lambda s: self.rows_per_second[s])
        return size, self.rows_per_second[size]


def load_engine(threads: int, variant: str = "auto") -> tuple[Engine, str]:
    """The shipped model, checksum verified, on ``threads`` onnxruntime threads, and the variant
    loaded (``auto`` picks it as the worker does)."""
    stored = ModelStore().get(MODEL)
    chosen = choose_variant(variant, planned_device(), stored.manifest.variant_names)
    return Engine(stored.verify(chosen), stored.manifest, EngineOptions(intra_op_threads=threads)), chosen


def measure_curve(
    engine: Engine,
    variant: str,
    threads: int,
    sizes: Sequence[int],
    seconds_per_size: float,
    rounds: int,
    seed: int = 0,
) -> EngineCurve:
    """Rows per second at each batch size: per round, one warm-up call then calls until
    ``seconds_per_size`` has passed (at least two); the best round counts, since other load on
    the machine only ever slows a round down. Rounds go over all sizes in turn, so a burst of
    outside load hits one round of a size rather than all of them."""
    rng = np.random.default_rng(seed)
    manifest = engine.manifest
    inputs = {
        size: (
            rng.standard_normal((size, *manifest.image_shape), dtype=np.float32),
            rng.uniform(0, manifest.schedule.num_train_timesteps, size).astype(np.float32),
            rng.integers(0, len(manifest.classes) + 1, size).astype(np.int64),
        )
        for size in sizes
    }
    best: dict[int, float] = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size in sizes:
            x, t, c = inputs[size]
            engine.run(x, t, c)
            calls, started = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - started < seconds_per_size:
                engine.run(x, t, c)
                calls += 1
            best[size] = max(best[size], calls * size / (time.perf_counter() - started))
    return EngineCurve(
        threads=threads,
        providers=engine.providers,
        variant=variant,
        rows_per_second=best,
        ms_per_call={s: 1000 * s / r for s, r in best.items()},
        knee=knee(best, 0.95),
        tick_rows_rule=tick_rows(best),
        best_rows_rule=best_rows(best),
    )
