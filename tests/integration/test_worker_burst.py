"""A worker in burst mode drains the queue and exits: deterministic worker runs for tests
and one-off batch jobs."""

from __future__ import annotations

import subprocess
import sys
import time

from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import RedisStore
from model_store.store import ModelStore
from tests.conftest import ROOT, stack_env

MODEL = ModelStore().get("mnist-cfg-unet").manifest.name


def test_burst_worker_drains_the_queue_and_exits(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    jobs = [
        Job(new_job_id(), JobRequest(MODEL, d, 1, 4, "dpmpp_2m", 3.0, d), Status.QUEUED, time.time())
        for d in range(3)
    ]
    for job in jobs:
        store.submit(job)
    cancelled = jobs[1]
    assert store.save_transition(cancelled, transition(cancelled, Status.CANCELLED, time.time()))

    out = subprocess.run(
        [sys.executable, "-m", "diffq", "worker", "--burst", "--name", "b1"],
        env=stack_env(valkey, prefix),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    final = store.get_many([j.id for j in jobs])
    assert [j.status if j else None for j in final] == [Status.SUCCEEDED, Status.CANCELLED, Status.SUCCEEDED]
    assert all(store.get_image(j.id, 0) for j in (jobs[0], jobs[2]))
    assert store.get_image(cancelled.id, 0) is None
    assert store.queue_stats(MODEL).depth == 0
    assert store.live_workers(MODEL, within_seconds=60) == 0  # it deregistered on the way out
