"""Continuous (step-level) against request-level batching, with real processes: a job joins a
running batch at the next step instead of waiting for it to drain, and the seed contract
holds in both modes: the same request gives the same bytes alone or in any mix."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Stack, wait_for
from tests.e2e.test_jobs_e2e import MIXED, fetch_images, run_concurrently

LONG = {"class_label": 2, "steps": 600, "sampler": "ddpm", "guidance_scale": 1.0, "seed": 1}
SHORT = {"class_label": 8, "steps": 4, "sampler": "ddim", "guidance_scale": 2.0, "seed": 2}
PROBE = {
    "class_label": 3,
    "num_images": 2,
    "steps": 8,
    "sampler": "dpmpp_2m",
    "guidance_scale": 3.0,
    "seed": 99,
}


def start(make_stack: Callable[..., Stack], mode: str) -> Stack:
    stack = make_stack(DIFFQ_MAX_WAIT_MS="20")
    stack.start_gateway()
    stack.start_worker(f"worker-{mode}", DIFFQ_BATCHING=mode)
    stack.wait_ready()
    return stack


@pytest.mark.parametrize("mode", ["continuous", "request"])
def test_a_short_job_joins_a_running_batch_only_in_continuous_mode(
    make_stack: Callable[..., Stack], mode: str
) -> None:
    stack = start(make_stack, mode)
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        long_id = client.post("/v1/jobs", json=LONG).json()["id"]
        deadline = time.monotonic() + 60
        while (job := client.get(f"/v1/jobs/{long_id}").json())["progress"]["step"] < 5:
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.01)
        short_id = client.post("/v1/jobs", json=SHORT).json()["id"]
        short = wait_for(client, short_id, {"succeeded", "failed"}, timeout=120)
        long = wait_for(client, long_id, {"succeeded", "failed"}, timeout=120)
    assert short["status"] == long["status"] == "succeeded"
    s, lg = short["timings"], long["timings"]
    if mode == "continuous":
        # It joined at the next step and left when done, while the long job kept running.
        assert lg["started_at"] < s["started_at"] and s["finished_at"] < lg["finished_at"]
    else:
        # Request-level: it waited for the running batch to drain.
        assert s["started_at"] >= lg["finished_at"]


def test_seed_contract_holds_in_both_modes(make_stack: Callable[..., Stack]) -> None:
    results = []
    for mode in ("continuous", "request"):
        stack = start(make_stack, mode)
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            alone = wait_for(client, client.post("/v1/jobs", json=PROBE).json()["id"], {"succeeded"})
            batched = run_concurrently(client, [*MIXED[:2], PROBE, *MIXED[2:]])[2]
            assert batched["status"] == "succeeded"
            results.append((fetch_images(client, alone), fetch_images(client, batched)))
        stack.stop_all()
    (cont_alone, cont_mixed), (req_alone, req_mixed) = results
    assert cont_alone == cont_mixed == req_alone == req_mixed
