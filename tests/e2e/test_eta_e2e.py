"""ETAs against the real stack: a gateway and a worker process on the shipped model. The worker
publishes its pace with its heartbeats; job views carry the estimates from it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import httpx

from tests.conftest import Stack, wait_for

JOB = {"class_label": 3, "num_images": 1, "steps": 40, "sampler": "ddim", "guidance_scale": 2.0}


def at(iso: str | None) -> float:
    assert iso is not None
    return datetime.fromisoformat(iso).timestamp()


def test_queued_and_running_jobs_carry_estimates(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(DIFFQ_MAX_BATCH_ROWS="4")  # two guided jobs at a time: a queue forms
    stack.start_gateway()
    stack.start_worker("w1")
    stack.wait_ready()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        first = client.post("/v1/jobs", json={**JOB, "seed": 0}).json()
        # No worker has stepped yet: nothing to estimate from.
        t = first["timings"]
        assert t["estimated_start_at"] is None and t["estimated_finish_at"] is None
        wait_for(client, first["id"], {"succeeded"})
        time.sleep(1.5)  # past a heartbeat (0.5 s here): the worker's pace is published
        jobs = [client.post("/v1/jobs", json={**JOB, "seed": s}).json() for s in range(1, 13)]
        queued = [j for j in jobs if j["status"] == "queued"]
        assert len(queued) >= 8, [j["status"] for j in jobs]
        starts = [at(j["timings"]["estimated_start_at"]) for j in queued]
        finishes = [at(j["timings"]["estimated_finish_at"]) for j in queued]
        assert starts == sorted(starts) and starts[-1] > starts[0]  # more work ahead, later
        for j, start, finish in zip(queued, starts, finishes, strict=True):
            assert at(j["timings"]["created_at"]) - 1 <= start < finish, j["timings"]
        running = next(
            v for v in (client.get(f"/v1/jobs/{j['id']}").json() for j in jobs) if v["status"] == "running"
        )
        assert running["timings"]["estimated_start_at"] is None  # it started: timings.started_at says when
        assert at(running["timings"]["estimated_finish_at"]) >= at(running["timings"]["started_at"])
        done = [wait_for(client, j["id"], {"succeeded"}) for j in jobs]
    for view in done:
        assert (
            view["timings"]["estimated_start_at"] is None and view["timings"]["estimated_finish_at"] is None
        )
