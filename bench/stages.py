"""Figure 6: an imported text-to-image pipeline's three stages, one by one and in a worker's mix.

The tiny random SD pipeline (``tooling.tiny_pipelines.build_tiny_sd``) is built and imported
(``tooling.importer.import_pipeline``) into a temporary store, then loaded as a worker loads it:
the denoiser through ``workers.engine.Engine``, the text encoder and VAE decoder through
``workers.main.load_stages``. Measured:

- each stage's engine curve: rows per second against rows per call, on the stage's own call
  statistics (``CallStats``: onnxruntime's call alone, no tokenizing, scaling or 8-bit
  conversion), best of the rounds;
- where a worker's time goes on a mix of guided text jobs (``bench.workload.text_mix``) run
  in-process through the worker's scheduler and stages (``bench.inprocess.run_jobs``).

``python -m bench.stages [--quick]`` runs this section alone and prints its part of the report.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.inprocess import DENOISER, StageShare, run_jobs, stage_shares
from bench.stats import knee
from bench.workload import MIX_SAMPLERS, TEXT_PROMPTS, text_mix
from model_store.store import ModelStore, StoredModel
from workers.batching import tick_rows
from workers.engine import CallStats, Engine, EngineOptions
from workers.main import load_stages
from workers.pipeline import Decoder, TextEncoder, token_ids

MODEL = "tiny-sd"
EXTRA_SIZE = (48, 32)  # beside the native 32x32: rows of the two sizes never share a call
FULL_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_SIZES = (1, 4, 16, 64)
JOBS = 24
TEXT_ENCODER, VAE_DECODER = "text encoder", "VAE decoder"


@dataclass(frozen=True)
class StageCurve:
    stage: str
    row: str  # what one row of a call is
    rows_per_second: dict[int, float]  # batch size -> best of the rounds
    ms_per_call: dict[int, float]
    knee: int  # smallest batch reaching 95% of the best throughput


@dataclass(frozen=True)
class PipelineStages:
    model: str  # what was measured, in words
    threads: int
    providers: list[str]
    build_seconds: float  # building, importing (export and checks) and loading the pipeline
    curves: list[StageCurve]
    max_batch_rows: int
    jobs: int
    images: int
    evaluations: int
    runs: int  # of the mix; the fastest is kept
    seconds: float  # the kept run's wall time
    shares: list[StageShare]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def curve_rates(
    call: Callable[[int], object],
    stats: CallStats,
    sizes: Sequence[int],
    seconds_per_size: float,
    rounds: int,
) -> dict[int, float]:
    """Rows per second at each batch size on the stage's own clock (``stats``, updated by every
    ``call(size)``): per round one warm-up call, then calls until ``seconds_per_size`` of wall
    time has passed (at least two); the best round counts. Rounds go over all sizes in turn,
    as in ``bench.engine.measure_curve``."""
    best = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size in sizes:
            call(size)
            rows, seconds = stats.rows, stats.seconds
            calls, started = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - started < seconds_per_size:
                call(size)
                calls += 1
            took = stats.seconds - seconds
            if took > 0:
                best[size] = max(best[size], (stats.rows - rows) / took)
    return best


def stage_curve(
    stage: str,
    row: str,
    call: Callable[[int], object],
    stats: CallStats,
    sizes: Sequence[int],
    seconds_per_size: float,
    rounds: int,
) -> StageCurve:
    """One stage's curve (``curve_rates``), its milliseconds per call and its knee."""
    rates = curve_rates(call, stats, sizes, seconds_per_size, rounds)
    return StageCurve(
        stage,
        row,
        rates,
        {s: 1000 * s / r if r else float("nan") for s, r in rates.items()},
        knee(rates, 0.95),
    )


def build_tiny_store(root: Path, seed: int) -> StoredModel:
    """The tiny SD pipeline built in ``root/src`` and imported into the store ``root/store``,
    at its native size and ``EXTRA_SIZE``. Needs the tooling's torch, diffusers, transformers."""
    from tooling.importer import ImportOptions, import_pipeline
    from tooling.tiny_pipelines import build_tiny_sd

    src = build_tiny_sd(root / "src", seed=seed)
    import_pipeline(src, MODEL, store=root / "store", options=ImportOptions(sizes=[EXTRA_SIZE]))
    return ModelStore(root / "store").get(MODEL)


def measure_curves(
    engine: Engine,
    encoder: TextEncoder,
    decoder: Decoder,
    sizes: Sequence[int],
    seconds_per_size: float,
    rounds: int,
    seed: int = 0,
) -> list[StageCurve]:
    """Each stage's curve at the model's native size, on random inputs (a call's cost does not
    depend on the values) and real token ids."""
    m = engine.manifest
    assert decoder.component is not None
    rng = np.random.default_rng(seed)
    shape = m.sample_shape()
    ids = {
        s: token_ids(encoder.tokenizer, [TEXT_PROMPTS[i % len(TEXT_PROMPTS)] for i in range(s)])
        for s in sizes
    }
    latents = {s: rng.standard_normal((s, *shape), dtype=np.float32) for s in sizes}
    timesteps = {s: rng.uniform(0, m.schedule.num_train_timesteps, s).astype(np.float32) for s in sizes}
    states = {s: engine.example_condition(s, seed) for s in sizes}
    vae = decoder.component
    seq = ids[sizes[0]].shape[1]
    latent = "x".join(map(str, shape))
    return [
        stage_curve(
            TEXT_ENCODER,
            f"{seq} token ids",
            lambda s: encoder.component.run(ids[s]),
            encoder.component.stats,
            sizes,
            seconds_per_size,
            rounds,
        ),
        stage_curve(
            "denoiser",
            f"a {latent} latent, its timestep and {seq}x{states[sizes[0]].shape[2]} hidden states",
            lambda s: engine.run(latents[s], timesteps[s], states[s]),
            engine.stats,
            sizes,
            seconds_per_size,
            rounds,
        ),
        stage_curve(
            VAE_DECODER,
            f"a {latent} latent",
            lambda s: vae.run(latents[s]),
            vae.stats,
            sizes,
            seconds_per_size,
            rounds,
        ),
    ]


def measure_stages(
    threads: int,
    quick: bool,
    seed: int = 0,
    seconds_per_size: float | None = None,
    built: tuple[StoredModel, float] | None = None,
) -> PipelineStages:
    """Build, import and load the tiny SD pipeline (or take ``built``: the stored model and the
    seconds its build took); measure its stage curves and the worker's time per stage on
    ``JOBS`` text jobs (the fastest of 1 run quick, 3 full)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffq-bench-stages-") as tmp:
        stored = build_tiny_store(Path(tmp), seed) if built is None else built[0]
        options = EngineOptions(intra_op_threads=threads)
        engine = Engine(stored.verify_all(), stored.manifest, options)
        encoder, decoder = load_stages(stored, options)
    if encoder is None or decoder.component is None:
        raise RuntimeError(f"{stored.manifest.ref} has no text encoder or VAE decoder")
    build_seconds = time.perf_counter() - began if built is None else built[1]
    curves = measure_curves(
        engine,
        encoder,
        decoder,
        QUICK_SIZES if quick else FULL_SIZES,
        seconds_per_size or (0.1 if quick else 0.5),
        rounds=1 if quick else 3,
        seed=seed,
    )
    denoiser_curve = next(c for c in curves if c.stage == "denoiser")
    rows = tick_rows(denoiser_curve.rows_per_second)  # the worker's rule (max_batch_rows=0)
    samplers = [s for s in MIX_SAMPLERS if s in stored.manifest.sampling.samplers]
    jobs = text_mix(JOBS, seed, sizes=(None, EXTRA_SIZE), samplers=samplers)
    runs = 1 if quick else 3
    # A fresh embedding cache per run, as a newly started worker has: a warm one would hide
    # the text encoder's cost on the second run.
    mixes = [
        run_jobs(
            engine, jobs, rows, encoder=TextEncoder(encoder.tokenizer, encoder.component), decoder=decoder
        )
        for _ in range(runs)
    ]
    run = min(mixes, key=lambda r: r.seconds)
    m = stored.manifest
    return PipelineStages(
        model=f"{m.ref}: tiny random SD (build_tiny_sd, seed {seed}), {m.image.width}x{m.image.height} "
        f"native and {EXTRA_SIZE[0]}x{EXTRA_SIZE[1]}, latent factor {m.latent.factor if m.latent else 1}",
        threads=threads,
        providers=engine.providers,
        build_seconds=build_seconds,
        curves=curves,
        max_batch_rows=rows,
        jobs=len(jobs),
        images=run.images,
        evaluations=run.evaluations,
        runs=runs,
        seconds=run.seconds,
        shares=stage_shares(run),
    )


def denoiser_share(p: PipelineStages) -> float:
    """The share of the worker's time spent in denoiser calls."""
    return next(s.share for s in p.shares if s.name == DENOISER)


def main(argv: list[str] | None = None) -> int:
    from bench.report import render_stages

    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = measure_stages(args.threads, args.quick, args.seed)
    print("\n".join(render_stages(result)))
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
