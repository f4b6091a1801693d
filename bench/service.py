"""Figure 2: the service at saturation against the raw engine at its best.

A backlog of one-image jobs goes through HTTP, Redis and one worker process. While jobs still
wait in the queue (from the first job's start to the last one's) the worker is saturated: its
denoiser rows per second in that window (each job's rows spread evenly over its run) are set
against the best rows per second of the raw engine curve (figure 1), the most this engine can
do on this machine at any batch size. The same jobs also run in this process on the same
engine at the worker's backlog size (``bench.inprocess``: the sampler, pixels and PNGs,
nothing of the service), which splits the gap into host work and the service.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from bench.client import Api
from bench.inprocess import QUIET_SECONDS, run_jobs
from bench.stack import BenchStack
from bench.stats import ratio, work_in_window
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
    max_batch_rows: int  # the worker's light-load tick
    backlog_rows: int  # its rows per call under a backlog
    engine_best_rows_per_second: float  # figure 1's best
    engine_best_size: int
    saturated_seconds: float  # first start to last start: jobs waited in the queue throughout
    saturated_rows_per_second: float
    service_seconds: float  # first submit to last success
    service_images_per_second: float
    inprocess_seconds: float
    inprocess_images_per_second: float
    inprocess_rows_per_second: float
    failed: int
    service_engine: EngineTime | None  # from the worker's metrics, when it exports them
    inprocess_engine: EngineTime

    @property
    def efficiency(self) -> float:
        """Saturated service rows/s over the raw engine's best rows/s."""
        return ratio(self.saturated_rows_per_second, self.engine_best_rows_per_second)

    @property
    def host_efficiency(self) -> float:
        """In-process rows/s over the engine's best: what the sampler and PNGs alone leave."""
        return ratio(self.inprocess_rows_per_second, self.engine_best_rows_per_second)


def measure_service(
    stack: BenchStack, api: Api, engine: Engine, min_images: int, best: tuple[int, float]
) -> ServiceEfficiency:
    """At least ``min_images`` one-image jobs, whole batches at the worker's backlog size,
    through the service then in-process; ``best`` is the engine curve's (size, rows/s)."""
    rows = stack.backlog_rows
    rows_per_job = uniform_jobs(1, SAMPLER, STEPS, GUIDANCE, 0)[0].rows_per_step
    per_batch = max(1, rows // rows_per_job)
    n = per_batch * math.ceil(max(min_images, 4 * per_batch) / per_batch)
    jobs = uniform_jobs(n, SAMPLER, STEPS, GUIDANCE, seed=1000)

    before = stack.worker_metrics()
    first_submit = time.time()
    ids = api.submit_all(jobs)
    done = api.wait_all(ids)
    after = stack.worker_metrics()
    ok = [f for f in done if f.status == "succeeded" and f.started_at and f.finished_at]
    failed = n - len(ok)
    last_success = max(f.finished_at or 0.0 for f in ok)
    service_seconds = last_success - first_submit
    runs = [(f.started_at or 0.0, f.finished_at or 0.0, float(rows_per_job * STEPS)) for f in ok]
    window = (min(r[0] for r in runs), max(r[0] for r in runs))

    stats = engine.stats
    was = EngineTime(stats.seconds, stats.calls, stats.rows)
    time.sleep(QUIET_SECONDS)
    local = run_jobs(engine, jobs, rows)
    inprocess = EngineTime(stats.seconds - was.seconds, stats.calls - was.calls, stats.rows - was.rows)
    return ServiceEfficiency(
        images=n,
        sampler=SAMPLER,
        steps=STEPS,
        guidance_scale=GUIDANCE,
        max_batch_rows=stack.tick_rows,
        backlog_rows=rows,
        engine_best_rows_per_second=best[1],
        engine_best_size=best[0],
        saturated_seconds=window[1] - window[0],
        saturated_rows_per_second=work_in_window(runs, *window) / (window[1] - window[0]),
        service_seconds=service_seconds,
        service_images_per_second=len(ok) / service_seconds,
        inprocess_seconds=local.seconds,
        inprocess_images_per_second=local.images / local.seconds,
        inprocess_rows_per_second=inprocess.rows / local.seconds,
        failed=failed,
        service_engine=_delta(before, after),
        inprocess_engine=inprocess,
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
