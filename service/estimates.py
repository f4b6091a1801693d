"""The gateway's ETAs: each model's backlog read at most once a second per process, and the
pure estimate (``diffq.eta``) of each job from it.

A job view is answered on the busiest routes, so the estimate adds no round trip to most of
them: the backlog (the queue's size and work, the workers' paces) is cached for
``MAX_AGE_SECONDS``, and concurrent requests share one read. A store that does not answer
leaves the last backlog in use, or no estimate: never an error.
"""

from __future__ import annotations

import asyncio
import time

from diffq.errors import Unavailable
from diffq.eta import Backlog, Estimate, estimate
from diffq.jobs import Job
from diffq.store import RedisStore

MAX_AGE_SECONDS = 1.0
MEAN_WEIGHT = 0.05  # a new submission's weight in the model's mean work per job


class Estimates:
    def __init__(self, store: RedisStore, live_within_seconds: float) -> None:
        self.store = store
        self.live_within_seconds = live_within_seconds
        self._cache: dict[str, tuple[float, Backlog]] = {}  # model -> (monotonic read time, backlog)
        self._reads: dict[str, asyncio.Future[Backlog]] = {}  # model -> the read under way
        self._mean_work: dict[str, float] = {}  # model -> recent submissions' mean evaluations

    def submitted(self, job: Job) -> None:
        """A new job of ``job``'s model: its work moves the model's mean."""
        model, work = job.request.model, float(job.request.evaluations)
        mean = self._mean_work.get(model)
        self._mean_work[model] = work if mean is None else mean + MEAN_WEIGHT * (work - mean)

    async def of(self, job: Job, position: int | None) -> Estimate | None:
        """``job``'s estimate, or None (terminal, no worker pace yet, or no backlog to go by)."""
        if job.terminal:
            return None
        model = job.request.model
        backlog = await self.backlog(model)
        if backlog is None:
            return None
        return estimate(job, position, backlog, time.time(), self._mean_work.get(model))

    async def backlog(self, model: str) -> Backlog | None:
        cached = self._cache.get(model)
        if cached is not None and time.monotonic() - cached[0] < MAX_AGE_SECONDS:
            return cached[1]
        read = self._reads.get(model)
        if read is None:
            read = asyncio.ensure_future(self.store.backlog_async(model, self.live_within_seconds))
            self._reads[model] = read
            read.add_done_callback(lambda _: self._reads.pop(model, None))
        try:
            backlog = await asyncio.shield(read)  # a caller that goes away leaves it to the others
        except Unavailable:
            return cached[1] if cached is not None else None
        self._cache[model] = (time.monotonic(), backlog)
        return backlog
