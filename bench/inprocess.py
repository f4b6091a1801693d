"""The worker's work without the service: the same rows, steps and PNGs, in this process.

Jobs join a running set between steps while rows are free (the worker's own
``workers.scheduler.Scheduler``), every step is one ``denoise_step`` over all rows, and a
finished job's images are turned into pixels and PNG-encoded with the worker's own encoder.
What is left out is everything the service adds: HTTP, Redis, claiming, progress writes,
status changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.workload import Request
from diffq.jobs import Job, Status, image_seed
from sampling.denoise import Condition, denoise_step, start_row, to_uint8
from sampling.registry import get_plan
from workers.batching import BatchPolicy
from workers.engine import Engine
from workers.scheduler import Scheduler
from workers.worker import encode_png

# onnxruntime's threads spin for a while after a call, in the worker and here: a side measured
# right after the other's last call would share the cores with that spinning. Pause this long.
QUIET_SECONDS = 0.1


@dataclass(frozen=True)
class Run:
    seconds: float
    images: int
    evaluations: int  # denoiser rows evaluated
    calls: int


def run_jobs(engine: Engine, jobs: Sequence[Request], max_rows: int, encode: bool = True) -> Run:
    """Sample every job to completion, ``max_rows`` denoiser rows per call at most, through the
    worker's own scheduler (``workers.scheduler``) with the service's I/O left out."""
    manifest = engine.manifest
    config = manifest.schedule.to_config()
    scheduler: Scheduler[None] = Scheduler(BatchPolicy(max_rows, 0.0))
    scheduler.add(
        (None, Job(str(i), job.job_request(manifest.name), Status.QUEUED, 0.0)) for i, job in enumerate(jobs)
    )
    images = evaluations = calls = 0
    started = time.perf_counter()
    while not scheduler.idle:
        for w in scheduler.schedule():
            req = w.job.request
            plan = get_plan(config, req.sampler, req.steps)
            condition = Condition.for_class(req.class_label, manifest.unconditional_class)
            rows = [
                start_row(
                    plan, image_seed(req.seed, i), condition, req.guidance_scale, manifest.sample_shape()
                )
                for i in range(req.num_images)
            ]
            scheduler.start(None, w.job, rows)
        batch = scheduler.batch()
        outputs = [denoise_step(g, engine.run, manifest.schedule.prediction_type) for g in batch.groups]
        calls += len(batch.groups)
        evaluations += sum(2 if r.guided else 1 for g in batch.groups for r in g)
        for flight in scheduler.update(batch, outputs).finished:
            for r in flight.rows:
                pixels = to_uint8(r.x)
                if encode:
                    encode_png(pixels)
            images += len(flight.rows)
            scheduler.remove(flight.job.id)
    return Run(time.perf_counter() - started, images, evaluations, calls)
