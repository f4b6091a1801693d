"""Figure 3: latency under load, continuous against request-level batching.

For each batching mode (``DIFFQ_BATCHING``) a fresh worker first takes a burst of jobs from the
mix (samplers and steps 4..50) to measure its capacity in jobs per second, first submit to last
success. The smaller of the two capacities is the reference; then the same open-loop Poisson
arrivals (same seeds, same jobs) at each fraction of it go to each mode, and each job's latency
is its own ``timings.total_ms``: accepted by the gateway to succeeded, on server clocks.
Nothing polls during a run; the client waits for the results after the last arrival.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.client import Api, Finished
from bench.stack import BenchStack
from bench.stats import percentile, ratio
from bench.workload import Request, job_mix, poisson_arrivals

LOADS = (0.5, 0.8, 0.95)


@dataclass(frozen=True)
class LoadPoint:
    load: float  # fraction of the reference capacity
    offered_per_second: float
    jobs: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_submit_lag_ms: float  # how late the client sent its worst arrival


@dataclass
class ModeResult:
    mode: str
    capacity_jobs_per_second: float = 0.0
    capacity_evaluations_per_second: float = 0.0
    points: list[LoadPoint] = field(default_factory=list)

    def at(self, load: float) -> LoadPoint | None:
        return next((p for p in self.points if p.load == load), None)


@dataclass
class LatencyUnderLoad:
    modes: dict[str, ModeResult]
    reference_capacity: float  # jobs per second the loads are fractions of
    capacity_jobs: int
    jobs_per_load: int
    missing: str = ""  # why a mode could not be measured

    def p99_ratio(self, load: float = 0.8) -> float:
        """Continuous p99 over request-level p99 at ``load``."""
        a, b = self._point("continuous", load), self._point("request", load)
        return ratio(a.p99_ms, b.p99_ms) if a and b else float("nan")

    def capacity_ratio(self) -> float:
        a, b = self.modes.get("continuous"), self.modes.get("request")
        return ratio(a.capacity_jobs_per_second, b.capacity_jobs_per_second) if a and b else float("nan")

    def _point(self, mode: str, load: float) -> LoadPoint | None:
        result = self.modes.get(mode)
        return result.at(load) if result else None


def measure_latency(
    stack: BenchStack,
    api: Api,
    modes: Sequence[str],
    capacity_jobs: int,
    capacity_batches: int,
    jobs_per_load: int,
    seed: int,
) -> LatencyUnderLoad:
    """``capacity_jobs`` jobs at least, and ``capacity_batches`` full worker batches at least, in
    each capacity burst (fewer would fit in one batch, where the two modes do the same)."""
    per_batch = max(1, stack.tick_rows // job_mix(1, seed)[0].rows_per_step)
    capacity_jobs = max(capacity_jobs, capacity_batches * per_batch)
    burst = job_mix(capacity_jobs, seed)
    results: dict[str, ModeResult] = {}
    # Capacities first (the reference needs both); the last mode measured keeps its worker for
    # its load points, so the worker is started once more at most.
    for mode in modes:
        start_mode(stack, mode)
        jobs_per_second, evaluations_per_second = capacity(api, burst)
        results[mode] = ModeResult(mode, jobs_per_second, evaluations_per_second)
    reference = min(r.capacity_jobs_per_second for r in results.values())
    for mode in reversed(modes):
        start_mode(stack, mode)
        for i, load in enumerate(LOADS):
            jobs = job_mix(jobs_per_load, seed + 1 + i)
            arrivals = poisson_arrivals(load * reference, jobs_per_load, seed + 101 + i)
            results[mode].points.append(run_load(api, jobs, arrivals, load, load * reference))
    missing = "" if "request" in modes else "the worker has no DIFFQ_BATCHING=request mode yet"
    return LatencyUnderLoad(results, reference, capacity_jobs, jobs_per_load, missing)


def start_mode(stack: BenchStack, mode: str) -> None:
    if stack.worker_mode != mode:
        stack.start_worker(mode)


def capacity(api: Api, jobs: Sequence[Request]) -> tuple[float, float]:
    """(jobs, denoiser evaluations) per second for a burst of ``jobs``: first submit to last success."""
    started = time.time()
    done = api.wait_all(api.submit_all(jobs))
    seconds = max(f.finished_at or 0.0 for f in done) - started
    ok = [j for j, f in zip(jobs, done, strict=True) if f.status == "succeeded"]
    return len(ok) / seconds, sum(j.evaluations for j in ok) / seconds


def run_load(
    api: Api, jobs: Sequence[Request], arrivals: Sequence[float], load: float, rate: float
) -> LoadPoint:
    """Open loop: each job is sent at its arrival time whatever happened to the earlier ones."""
    futures: list[Future[str]] = []
    lags = []
    with ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        for job, at in zip(jobs, arrivals, strict=True):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lags.append(max(0.0, -delay))
            futures.append(pool.submit(api.submit, job))
        ids = [f.result() for f in futures]
    done: list[Finished] = api.wait_all(ids)
    ok = [f.total_ms for f in done if f.status == "succeeded" and f.total_ms is not None]
    return LoadPoint(
        load=load,
        offered_per_second=rate,
        jobs=len(jobs),
        failed=len(jobs) - len(ok),
        p50_ms=percentile(ok, 50) if ok else float("nan"),
        p95_ms=percentile(ok, 95) if ok else float("nan"),
        p99_ms=percentile(ok, 99) if ok else float("nan"),
        max_submit_lag_ms=1000 * max(lags, default=0.0),
    )
