"""The worker's work without the service: the same rows, steps and PNGs, in this process.

Jobs join a running set between steps while rows are free (the worker's own
``workers.scheduler.Scheduler``), every step is one ``denoise_step`` per sample shape over all
rows, and a finished job's images are turned into pixels and PNG-encoded with the worker's own
encoder. A text model's prompts go through the worker's ``TextEncoder`` (one call for the jobs
joining at a step, embeddings cached), a latent model's images through its ``Decoder`` (one
call for the images finishing together). What is left out is everything the service adds:
HTTP, Redis, claiming, progress writes, status changes.

Each run also says where its time went (``Run.stages``), by the loop's clock around each stage
and the ONNX components' own call statistics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.workload import Request
from diffq.jobs import Job, JobRequest, Status, image_seed
from model_store.manifest import Manifest
from sampling.denoise import Condition, denoise_step, start_row
from sampling.registry import get_plan
from workers.batching import BatchPolicy
from workers.engine import CallStats, Engine
from workers.pipeline import Decoder, TextEncoder
from workers.png import encode_png
from workers.scheduler import Scheduler

# onnxruntime's threads spin for a while after a call, in the worker and here: a side measured
# right after the other's last call would share the cores with that spinning. Pause this long.
QUIET_SECONDS = 0.1

# Where a run's time goes, in the order reported. Together with REST they add up to the run.
TEXT = "text encoding"  # tokenizing, the embedding cache, text-encoder calls
DENOISER = "denoiser calls"  # the engine's own clock
SAMPLER = "sampler math"  # around the denoiser calls: batch assembly, guidance, the row updates
DECODE = "decoding"  # VAE-decoder calls (latent models), scaling and 8-bit conversion
PNG = "PNG encoding"
REST = "the rest"  # scheduling, plans, initial noise, the loop itself
STAGES = (TEXT, DENOISER, SAMPLER, DECODE, PNG)


@dataclass(frozen=True)
class StageTime:
    """Time one stage took in a run; ``calls``, ``rows`` and ``onnx_seconds`` are its ONNX
    model's own counts (zero for a stage without one)."""

    seconds: float
    calls: int = 0
    rows: int = 0
    onnx_seconds: float = 0.0


@dataclass(frozen=True)
class Run:
    seconds: float
    images: int
    evaluations: int  # denoiser rows evaluated
    calls: int
    stages: dict[str, StageTime] = field(default_factory=dict)  # keyed by STAGES


@dataclass(frozen=True)
class StageShare:
    name: str
    seconds: float
    share: float  # of the run's wall time
    calls: int
    rows: int
    onnx_seconds: float


def stage_shares(run: Run) -> list[StageShare]:
    """Each stage's share of the run's wall time, in ``STAGES`` order, and the rest (``REST``:
    the wall time no stage accounts for, never below zero)."""
    shares = []
    total = run.seconds
    for name in STAGES:
        t = run.stages.get(name, StageTime(0.0))
        shares.append(StageShare(name, t.seconds, _share(t.seconds, total), t.calls, t.rows, t.onnx_seconds))
    rest = max(0.0, total - sum(s.seconds for s in shares))
    return [*shares, StageShare(REST, rest, _share(rest, total), 0, 0, 0.0)]


def _share(part: float, total: float) -> float:
    return part / total if total > 0 else 0.0


def job_conditions(
    manifest: Manifest, encoder: TextEncoder | None, requests: Sequence[JobRequest]
) -> list[Condition]:
    """Each job's condition as the worker builds it (``Worker._conditions``): its class label,
    or its prompt's and negative prompt's hidden states (the empty prompt when it has none),
    every prompt of the jobs joining at one step in one ``encode``."""
    if encoder is None:
        return [Condition.for_class(r.class_label, manifest.unconditional_class) for r in requests]
    texts = [t for r in requests for t in (r.prompt or "", r.negative_prompt or "")]
    states = encoder.encode(texts) if texts else []
    return [Condition.for_text(states[2 * i], states[2 * i + 1]) for i in range(len(requests))]


class _Clock:
    """Seconds per stage, summed over a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def _since(stats: CallStats | None, before: CallStats) -> CallStats:
    if stats is None:
        return CallStats()
    return CallStats(stats.calls - before.calls, stats.rows - before.rows, stats.seconds - before.seconds)


def _copy(stats: CallStats | None) -> CallStats:
    return CallStats() if stats is None else CallStats(stats.calls, stats.rows, stats.seconds)


def run_jobs(
    engine: Engine,
    jobs: Sequence[Request],
    max_rows: int,
    encode: bool = True,
    encoder: TextEncoder | None = None,
    decoder: Decoder | None = None,
) -> Run:
    """Sample every job to completion, ``max_rows`` denoiser rows per call at most, through the
    worker's own scheduler (``workers.scheduler``) and stages with the service's I/O left out.

    ``encoder`` and ``decoder`` are a text-to-image model's first and last stages
    (``workers.main.load_stages``); without them conditions are class labels and samples are
    pixels, as for the shipped MNIST model. ``encode=False`` skips the PNGs.
    """
    manifest = engine.manifest
    decoder = decoder or Decoder()
    config = manifest.schedule.to_config()
    scheduler: Scheduler[None] = Scheduler(BatchPolicy(max_rows, 0.0))
    scheduler.add(
        (None, Job(str(i), job.job_request(manifest.name), Status.QUEUED, 0.0)) for i, job in enumerate(jobs)
    )
    text_stats = encoder.component.stats if encoder else None
    vae_stats = decoder.component.stats if decoder.component else None
    before = [_copy(engine.stats), _copy(text_stats), _copy(vae_stats)]
    clock = _Clock()
    images = evaluations = calls = 0
    started = time.perf_counter()
    while not scheduler.idle:
        joining = scheduler.schedule()
        with clock(TEXT):
            conditions = job_conditions(manifest, encoder, [w.job.request for w in joining])
        for w, condition in zip(joining, conditions, strict=True):
            req = w.job.request
            plan = get_plan(config, req.sampler, req.steps)
            shape = manifest.sample_shape(req.width, req.height)
            rows = [
                start_row(plan, image_seed(req.seed, i), condition, req.guidance_scale, shape)
                for i in range(req.num_images)
            ]
            scheduler.start(None, w.job, rows)
        batch = scheduler.batch()
        with clock(SAMPLER):
            outputs = [denoise_step(g, engine.run, manifest.schedule.prediction_type) for g in batch.groups]
        calls += len(batch.groups)
        evaluations += sum(2 if r.guided else 1 for g in batch.groups for r in g)
        finished = scheduler.update(batch, outputs).finished
        if not finished:
            continue
        with clock(DECODE):  # the images finishing together: one decoder call per shape
            pixels = decoder.pixels([r.x for f in finished for r in f.rows])
        if encode:
            with clock(PNG):
                for p in pixels:
                    encode_png(p)
        images += len(pixels)
        for flight in finished:
            scheduler.remove(flight.job.id)
    seconds = time.perf_counter() - started
    denoiser = _since(engine.stats, before[0])
    text, vae = _since(text_stats, before[1]), _since(vae_stats, before[2])
    t = clock.seconds
    stages = {
        TEXT: StageTime(t.get(TEXT, 0.0), text.calls, text.rows, text.seconds),
        DENOISER: StageTime(denoiser.seconds, denoiser.calls, denoiser.rows, denoiser.seconds),
        # denoise_step's time less the engine's own: what the sampler does around each call
        SAMPLER: StageTime(max(0.0, t.get(SAMPLER, 0.0) - denoiser.seconds)),
        DECODE: StageTime(t.get(DECODE, 0.0), vae.calls, vae.rows, vae.seconds),
        PNG: StageTime(t.get(PNG, 0.0)),
    }
    return Run(seconds, images, evaluations, calls, stages)
