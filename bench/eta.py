"""Figure 10: how far the ETAs are from what happened, under load.

After a few jobs give the worker a pace (published with its heartbeats), the same mix of
jobs as figure 3 goes in twice: as a burst (a backlog the length of the whole run) and as
open-loop Poisson arrivals at 80% of figure 3's reference capacity. Each job's estimate is
the one its submission was answered with (``timings.estimated_start_at`` and
``estimated_finish_at``); what happened is its ``started_at`` and ``finished_at``, all on the
servers' clocks. Errors are absolute seconds, and relative to the job's actual time from
submission to finish.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.client import Api, Finished
from bench.stack import BenchStack
from bench.stats import percentile
from bench.workload import Request, job_mix, poisson_arrivals

LOAD = 0.8
WARM_JOBS = 8
HEARTBEAT_SECONDS = 2.0  # the stack's (``DIFFQ_HEARTBEAT_SECONDS`` at its default)


@dataclass(frozen=True)
class EtaPoint:
    name: str
    jobs: int
    estimated: int  # jobs whose submission answer carried an estimate
    median_wait_s: float  # submission to finish, what happened
    start_median_s: float
    start_p90_s: float
    finish_median_s: float
    finish_p90_s: float
    finish_median_relative: float  # |error| over the actual submission-to-finish time


@dataclass
class EtaAccuracy:
    points: list[EtaPoint] = field(default_factory=list)

    def at(self, name: str) -> EtaPoint | None:
        return next((p for p in self.points if p.name == name), None)


def measure_eta(
    stack: BenchStack, api: Api, reference_jobs_per_second: float, jobs: int, seed: int
) -> EtaAccuracy:
    if stack.worker_mode != "continuous":
        stack.start_worker("continuous")
    api.wait_all(api.submit_all(job_mix(WARM_JOBS, seed + 500)))
    time.sleep(2 * HEARTBEAT_SECONDS + 0.5)  # its pace is published with its next heartbeat
    result = EtaAccuracy()
    burst = job_mix(jobs, seed + 501)
    with ThreadPoolExecutor(4) as pool:
        views = list(pool.map(api.submit_view, burst))
    result.points.append(accuracy("burst", views, api.wait_all([v["id"] for v in views])))
    arrivals = poisson_arrivals(LOAD * reference_jobs_per_second, jobs, seed + 502)
    views = open_loop(api, job_mix(jobs, seed + 503), arrivals)
    result.points.append(accuracy(f"{LOAD:.0%} load", views, api.wait_all([v["id"] for v in views])))
    return result


def open_loop(api: Api, jobs: Sequence[Request], arrivals: Sequence[float]) -> list[dict[str, Any]]:
    """Each job sent at its arrival time; the submission answers in the jobs' order."""
    with ThreadPoolExecutor(8) as pool:
        start, futures = time.perf_counter(), []
        for job, at in zip(jobs, arrivals, strict=True):
            if (delay := start + at - time.perf_counter()) > 0:
                time.sleep(delay)
            futures.append(pool.submit(api.submit_view, job))
        return [f.result() for f in futures]


def accuracy(name: str, views: Sequence[dict[str, Any]], done: Sequence[Finished]) -> EtaPoint:
    starts, finishes, relative, waits, estimated = [], [], [], [], 0
    for view, f in zip(views, done, strict=True):
        if f.status != "succeeded" or f.started_at is None or f.finished_at is None:
            continue
        t = view["timings"]
        waits.append(f.finished_at - f.created_at)
        if t.get("estimated_finish_at") is None:
            continue
        estimated += 1
        # A job already running when its submission was answered has no estimated start.
        start = _epoch(t["estimated_start_at"]) if t.get("estimated_start_at") else f.started_at
        starts.append(abs(start - f.started_at))
        err = abs(_epoch(t["estimated_finish_at"]) - f.finished_at)
        finishes.append(err)
        relative.append(err / max(1e-3, f.finished_at - f.created_at))
    nan = float("nan")

    def q(values: list[float], p: float) -> float:
        return percentile(values, p) if values else nan

    return EtaPoint(
        name,
        len(views),
        estimated,
        q(waits, 50),
        q(starts, 50),
        q(starts, 90),
        q(finishes, 50),
        q(finishes, 90),
        q(relative, 50),
    )


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
