"""Nothing accepted disappears: a job queued, then running, longer than the result TTL still
finishes and stays readable; only a terminal job's record and images expire after the TTL."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.conftest import Stack, wait_for

TTL = 2


def test_a_job_outliving_the_ttl_while_queued_and_running_finishes_and_is_readable(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(DIFFQ_RESULT_TTL_SECONDS=str(TTL))
    stack.start_gateway()
    body = {"class_label": 4, "steps": 1000, "sampler": "ddpm", "guidance_scale": 3.0, "seed": 3}
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        time.sleep(TTL + 0.5)  # queued past the TTL: no worker yet
        queued = client.get(f"/v1/jobs/{job_id}")
        assert queued.status_code == 200 and queued.json()["status"] == "queued"
        stack.start_worker("worker-1")
        done = wait_for(client, job_id, {"succeeded", "failed"}, timeout=120)
        assert done["status"] == "succeeded"
        assert done["timings"]["run_ms"] > TTL * 1000, "the job must also have run past the TTL"
        assert client.get(done["images"][0]["url"]).status_code == 200
        time.sleep(TTL + 0.5)  # terminal past the TTL: now it goes
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
