"""Figure 2: service efficiency at saturation.

Images per second through HTTP, Redis and one worker process, from the first submit to the
last success, divided by the images per second of the same jobs run in this process on the
same engine settings (``bench.inprocess``: the same sampler, steps and rows per call, pixels
and PNG encoding included, nothing of the service).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from bench.client import Api
from bench.inprocess import QUIET_SECONDS, run_jobs
from bench.stack import BenchStack
from bench.stats import ratio
from bench.workload import uniform_jobs
from workers.engine import Engine

SAMPLER, STEPS, GUIDANCE = "dpmpp_2m", 8, 1.5  # the model's defaults: two rows per image


@dataclass(frozen=True)
class EngineTime:
    """Where the wall time went: the denoiser calls' share of it, by the engine's own clock."""

    seconds: float  # spent inside denoiser calls
    calls: int
    rows: int


@dataclass(frozen=True)
class ServiceEfficiency:
    images: int
    sampler: str
    steps: int
    guidance_scale: float
    max_batch_rows: int
    service_seconds: float
    service_images_per_second: float
    inprocess_seconds: float
    inprocess_images_per_second: float
    failed: int
    service_engine: EngineTime | None  # from the worker's metrics, when it exports them
    inprocess_engine: EngineTime

    @property
    def efficiency(self) -> float:
        return ratio(self.service_images_per_second, self.inprocess_images_per_second)


def measure_service(stack: BenchStack, api: Api, engine: Engine, min_images: int) -> ServiceEfficiency:
    """At least ``min_images`` one-image jobs, a whole number of full worker batches, through the
    service then in-process."""
    rows = stack.tick_rows
    per_batch = max(1, rows // uniform_jobs(1, SAMPLER, STEPS, GUIDANCE, 0)[0].rows_per_step)
    n = per_batch * math.ceil(min_images / per_batch)
    jobs = uniform_jobs(n, SAMPLER, STEPS, GUIDANCE, seed=1000)

    before = stack.worker_metrics()
    first_submit = time.time()
    ids = api.submit_all(jobs)
    done = api.wait_all(ids)
    failed = sum(f.status != "succeeded" for f in done)
    last_success = max(f.finished_at or 0.0 for f in done)
    service_seconds = last_success - first_submit
    after = stack.worker_metrics()

    stats = engine.stats
    was = EngineTime(stats.seconds, stats.calls, stats.rows)
    time.sleep(QUIET_SECONDS)
    local = run_jobs(engine, jobs, rows)
    return ServiceEfficiency(
        images=n,
        sampler=SAMPLER,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        max_batch_rows=rows,
        service_seconds=service_seconds,
        service_images_per_second=(n - failed) / service_seconds,
        inprocess_seconds=local.seconds,
        inprocess_images_per_second=local.images / local.seconds,
        failed=failed,
        service_engine=_delta(before, after),
        inprocess_engine=EngineTime(
            stats.seconds - was.seconds, stats.calls - was.calls, stats.rows - was.rows
        ),
    )


def _delta(before: dict[str, float], after: dict[str, float]) -> EngineTime | None:
    keys = (
        "diffq_denoiser_call_duration_seconds_sum",
        "diffq_denoiser_call_duration_seconds_count",
        "diffq_batch_rows_sum",
    )
    if not all(k in before and k in after for k in keys):
        return None
    seconds, calls, rows = (after[k] - before[k] for k in keys)
    return EngineTime(seconds, int(calls), int(rows))
