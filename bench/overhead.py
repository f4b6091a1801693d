"""Figure 4: what the service adds to one job on an idle stack.

Each repetition submits the job and waits for it in the same request (``Prefer: wait`` on the
``POST``; a gateway without it is polled), timed by the client from before the ``POST`` to the
answer that says ``succeeded``; then runs the same request in this process
(``bench.inprocess``, PNG included).
The overhead is the median of the paired differences. Each side starts after a short pause
(``QUIET_SECONDS``), so it runs on an otherwise idle stack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.client import Api, Finished
from bench.inprocess import QUIET_SECONDS, run_jobs
from bench.stack import BenchStack
from bench.stats import median
from bench.workload import Request
from workers.engine import Engine

JOB = Request(sampler="dpmpp_2m", steps=8, class_label=7, guidance_scale=1.5, seed=42)


@dataclass(frozen=True)
class Overhead:
    job: Request
    repetitions: int
    end_to_end_ms: float  # medians
    inprocess_ms: float
    overhead_ms: float  # median of paired differences
    queue_ms: float  # the job's own timings (server clocks): submit to start ...
    run_ms: float  # ... and start to succeeded
    prefer_wait: bool
    max_wait_ms: int  # the worker's gathering window, part of the queue time


def measure_overhead(stack: BenchStack, engine: Engine, repetitions: int) -> Overhead:
    fast = Api(stack.base_url, poll_seconds=0.002)
    try:
        for _ in range(2):  # warm both paths: connections, plans, onnxruntime at this batch size
            fast.run(JOB)
            run_jobs(engine, [JOB], stack.tick_rows)
        e2e, local, views = [], [], []
        for _ in range(repetitions):
            time.sleep(QUIET_SECONDS)
            started = time.perf_counter()
            view = fast.run(JOB)
            e2e.append(1000 * (time.perf_counter() - started))
            views.append(Finished.from_view(view))
            time.sleep(QUIET_SECONDS)
            local.append(1000 * run_jobs(engine, [JOB], stack.tick_rows).seconds)
        return Overhead(
            job=JOB,
            repetitions=repetitions,
            end_to_end_ms=median(e2e),
            inprocess_ms=median(local),
            overhead_ms=median([a - b for a, b in zip(e2e, local, strict=True)]),
            queue_ms=median([v.queue_ms or 0.0 for v in views]),
            run_ms=median([v.run_ms or 0.0 for v in views]),
            prefer_wait=bool(fast.prefer_wait),
            max_wait_ms=stack.max_wait_ms,
        )
    finally:
        fast.close()
