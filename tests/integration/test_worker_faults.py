"""Retries, reclaims and dead letters, with a real worker (in this process, burst mode) and
the shipped model: the job records say what happened, and the worker's metrics count it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

from diffq.jobs import Job, JobRequest, Priority, Status, new_job_id, transition
from diffq.store import RedisStore
from model_store.store import ModelStore
from tests.conftest import stack_env, worker_settings
from workers.main import build_worker

MODEL = ModelStore().get("mnist-cfg-unet").manifest.name


def queued(seed: int, attempts: int = 0) -> Job:
    req = JobRequest(MODEL, seed % 10, 1, 3, "ddim", 1.0, seed)
    return Job(new_job_id(), req, Status.QUEUED, time.time(), attempts=attempts)


def test_poison_job_is_dead_lettered_and_the_rest_go_on(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    poison, healthy = queued(1, attempts=3), queued(2)
    store.submit(poison)
    store.submit(healthy)

    worker = build_worker(worker_settings(valkey, prefix, max_attempts=3, worker_id="w-dl"))
    worker.run(burst=True)

    failed, done = store.get(poison.id), store.get(healthy.id)
    assert failed is not None and failed.status == Status.FAILED
    assert failed.error is not None and failed.error.type == "max_attempts_exceeded"
    assert done is not None and done.status == Status.SUCCEEDED
    assert [d["job"] for d in store.dead_letters(MODEL)] == [poison.id]
    # What an operator sees: `diffq dead-letters`, one JSON line per letter.
    cli = subprocess.run(
        [sys.executable, "-m", "diffq", "dead-letters", "--model", MODEL],
        env=stack_env(valkey, prefix),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    (letter,) = [json.loads(line) for line in cli.stdout.splitlines()]
    assert letter["job"] == poison.id and letter["attempts"] == "3"
    reg = worker._metrics.registry
    labels = {"model": MODEL}
    assert reg.get_sample_value("diffq_dead_letters_total", labels) == 1
    assert (
        reg.get_sample_value("diffq_job_errors_total", {**labels, "error_type": "max_attempts_exceeded"}) == 1
    )
    assert reg.get_sample_value("diffq_jobs_finished_total", {**labels, "status": "failed"}) == 1
    assert reg.get_sample_value("diffq_jobs_finished_total", {**labels, "status": "succeeded"}) == 1
    assert reg.get_sample_value("diffq_images_generated_total", labels) == 1


def test_job_of_a_dead_worker_is_reclaimed_and_counted_as_a_retry(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    job = queued(3)
    store.submit(job)
    # A worker claims it, starts it, and dies without renewing its lease.
    assert len(store.claim(MODEL, "ghost", 1)) == 1
    assert store.save_transition(job, transition(job, Status.RUNNING, time.time(), worker="ghost"))
    time.sleep(0.6)

    worker = build_worker(worker_settings(valkey, prefix, lease_seconds=0.5, worker_id="w-rc"))
    worker.run(burst=True)

    done = store.get(job.id)
    assert done is not None and done.status == Status.SUCCEEDED and done.worker == "w-rc"
    assert done.attempts == 2
    reg = worker._metrics.registry
    assert reg.get_sample_value("diffq_job_reclaims_total", {"model": MODEL}) == 1
    assert reg.get_sample_value("diffq_job_retries_total", {"model": MODEL}) == 1
    assert store.queue_stats(MODEL).depth == 0


def test_a_job_past_its_deadline_gets_no_denoiser_time(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    late = replace(queued(4), created_at=time.time() - 5)
    late = replace(late, request=replace(late.request, deadline_seconds=1.0))
    store.submit(late)

    worker = build_worker(worker_settings(valkey, prefix, worker_id="w-dl"))
    worker.run(burst=True)

    got = store.get(late.id)
    assert got is not None and got.status == Status.EXPIRED and got.attempts == 0
    assert got.error is not None and got.error.type == "deadline_exceeded"
    assert worker.engine.stats.calls == 0
    assert store.get_image(late.id, 0) is None


def test_a_running_job_stops_at_its_deadline(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    slow = queued(5)
    slow = replace(slow, request=replace(slow.request, steps=1000, sampler="ddpm", deadline_seconds=0.5))
    store.submit(slow)

    worker = build_worker(worker_settings(valkey, prefix, worker_id="w-run"))
    worker.run(burst=True)

    got = store.get(slow.id)
    assert got is not None and got.status == Status.EXPIRED and got.attempts == 1
    assert 0 < worker.engine.stats.calls < 1000
    assert store.get_image(slow.id, 0) is None
    reg = worker._metrics.registry
    assert reg.get_sample_value("diffq_jobs_finished_total", {"model": MODEL, "status": "expired"}) == 1


def test_workers_take_high_priority_jobs_first(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    submitted = []
    for priority in (Priority.LOW, Priority.NORMAL, Priority.HIGH):
        job = queued(6)
        job = replace(job, request=replace(job.request, class_label=None, priority=priority))
        store.submit(job)
        submitted.append(job)
    # One denoiser row per call: the jobs run one after another, in the order the worker picks.
    worker = build_worker(worker_settings(valkey, prefix, max_batch_rows=1, max_wait_ms=0))
    worker.run(burst=True)

    done = [store.get(j.id) for j in submitted]
    assert all(d is not None and d.status == Status.SUCCEEDED for d in done)
    started = {d.request.priority: d.started_at for d in done if d}
    assert started[Priority.HIGH] < started[Priority.NORMAL] < started[Priority.LOW]  # type: ignore[operator]


def test_a_stale_delivery_is_let_go_not_restarted(valkey: str, prefix: str) -> None:
    """Worker A reclaims the job of a dead worker and pauses past its lease before starting it;
    worker B reclaims the entry from A and runs the job. When A resumes it must leave the job
    to B: no requeue (the status would flicker), no second start, no extra attempt."""
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    job = queued(4)
    store.submit(job)
    assert len(store.claim(MODEL, "ghost", 1)) == 1  # a worker that then died
    assert store.save_transition(job, transition(job, Status.RUNNING, time.time(), worker="ghost"))
    time.sleep(0.4)
    a = build_worker(worker_settings(valkey, prefix, lease_seconds=0.3, worker_id="w-a"))
    a._resume()
    assert a._reclaim(force=True)  # waiting to start; its copy says running under the ghost
    time.sleep(0.4)  # A is paused past its lease; B reclaims the entry from A and starts the job
    b = build_worker(worker_settings(valkey, prefix, lease_seconds=0.3, worker_id="w-b"))
    b._resume()
    assert b._reclaim(force=True)
    b._admit()
    running = store.get(job.id)
    assert running is not None and (running.status, running.worker, running.attempts) == (
        Status.RUNNING,
        "w-b",
        2,
    )
    a._admit()  # A resumes where it paused
    after = store.get(job.id)
    assert after is not None and (after.status, after.worker, after.attempts) == (Status.RUNNING, "w-b", 2)
    assert job.id not in a.scheduler.running
    b.run(burst=True)
    done = store.get(job.id)
    assert done is not None and done.status == Status.SUCCEEDED and done.worker == "w-b"
