"""One key's backlog does not hold another key's work behind it: the gateway, Valkey and a
worker as processes, two keys, the weighted fair order at claim time."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service.auth import hash_key
from tests.conftest import Stack, wait_for

ALICE, BOB = "dq_alice-fair-0123456789", "dq_bob-fair-9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"
# 4 guided images: 8 rows a step, the worker's whole batch, so jobs run one after another.
HEAVY = {"class_label": 3, "num_images": 4, "steps": 8, "guidance_scale": 3.0, "seed": 1}
LIGHT = {"class_label": 7, "num_images": 1, "steps": 8, "guidance_scale": 3.0, "seed": 2}


def test_a_light_keys_job_is_not_queued_behind_a_heavy_keys_backlog(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(DIFFQ_AUTH="required", DIFFQ_API_KEYS=KEYS, DIFFQ_MAX_BATCH_ROWS="8")
    stack.start_gateway()
    stack.start_worker("worker-1")
    stack.wait_ready()
    alice = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)
    bob = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {BOB}"}, timeout=30)
    with alice, bob:
        backlog = [alice.post("/v1/jobs", json={**HEAVY, "seed": i}).json()["id"] for i in range(16)]
        light = bob.post("/v1/jobs", json=LIGHT).json()
        # First in, first out would put it behind most of the sixteen; the fair order puts it
        # after the few of alice's jobs a worker already holds.
        assert light["queue_position"] is not None and light["queue_position"] <= 5
        mine = wait_for(bob, light["id"], {"succeeded"})
        theirs = [wait_for(alice, j, {"succeeded"}) for j in backlog]
    started_after = [j for j in theirs if j["timings"]["started_at"] > mine["timings"]["started_at"]]
    assert len(started_after) >= 8, [j["timings"]["started_at"] for j in theirs]
