"""The worker's work without the service: the same rows, steps and PNGs, in this process.

Jobs join a running set between steps while rows are free (``workers.batching.admit``, as the
worker does), every step is one ``denoise_step`` over all rows, and a finished job's images
are turned into pixels and PNG-encoded with the worker's own encoder. What is left out is
everything the service adds: HTTP, Redis, claiming, progress writes, status changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.workload import Request
from diffq.jobs import image_seed
from sampling.denoise import Condition, RowState, denoise_step, start_row, to_uint8
from sampling.registry import get_plan
from workers.batching import BatchPolicy, admit
from workers.engine import Engine
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
    """Sample every job to completion, ``max_rows`` denoiser rows per call at most."""
    manifest = engine.manifest
    config = manifest.schedule.to_config()
    policy = BatchPolicy(max_rows, 0.0)
    pending = list(jobs)
    active: list[list[RowState]] = []
    images = evaluations = calls = 0
    started = time.perf_counter()
    while pending or active:
        n = admit(policy, sum(_rows(rows) for rows in active), [j.rows_per_step for j in pending])
        for job in pending[:n]:
            plan = get_plan(config, job.sampler, job.steps)
            active.append(
                [
                    start_row(
                        plan,
                        image_seed(job.seed, i),
                        Condition.for_class(job.class_label, manifest.unconditional_class),
                        job.guidance_scale,
                        manifest.image_shape,
                    )
                    for i in range(job.num_images)
                ]
            )
        pending = pending[n:]
        flat = [r for rows in active for r in rows]
        stepped = denoise_step(flat, engine.run, manifest.schedule.prediction_type)
        calls += 1
        evaluations += engine.stats.last_rows
        k, still = 0, []
        for rows in active:
            mine, k = stepped[k : k + len(rows)], k + len(rows)
            if all(r.done for r in mine):
                for r in mine:
                    pixels = to_uint8(r.x)
                    if encode:
                        encode_png(pixels)
                images += len(mine)
            else:
                still.append(mine)
        active = still
    return Run(time.perf_counter() - started, images, evaluations, calls)


def _rows(rows: Sequence[RowState]) -> int:
    return sum(2 if r.guided else 1 for r in rows)
