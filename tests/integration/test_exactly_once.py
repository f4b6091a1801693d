"""Exactly-once results with a real Valkey and the shipped model: a job's images are written
only while it runs, so once it has succeeded, a second worker that ran it too (a stalled one
whose lease was taken over) changes neither its record nor its images."""

from __future__ import annotations

import time

from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import Claimed, RedisStore
from model_store.store import ModelStore
from sampling.denoise import Condition, denoise_step, start_row
from sampling.registry import get_plan
from tests.conftest import worker_settings
from workers.main import build_worker
from workers.worker import InFlight, Worker

MODEL = ModelStore().get("mnist-cfg-unet").manifest.name


def queued(seed: int) -> Job:
    return Job(new_job_id(), JobRequest(MODEL, 4, 2, 3, "ddim", 1.0, seed), Status.QUEUED, time.time())


def images(store: RedisStore, job: Job) -> list[bytes | None]:
    return [store.get_image(job.id, i) for i in range(job.request.num_images + 1)]


def test_images_are_written_only_while_the_job_runs(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    job = queued(1)
    store.submit(job)
    early = transition(job, Status.FAILED, time.time())  # any change from "queued": not ours to store
    running = transition(job, Status.RUNNING, time.time(), worker="w")
    assert store.store_results([(running, early, [b"early"])]) == [False]
    assert store.get_image(job.id, 0) is None and store.get(job.id).status == Status.QUEUED  # type: ignore[union-attr]

    assert store.save_transition(job, running)
    done = transition(running, Status.SUCCEEDED, time.time(), image_count=2, worker="w")
    other = queued(2)  # no record stored: nothing written for it, and the first result stands
    ghost = transition(other, Status.RUNNING, time.time(), worker="w")
    ok = store.store_results(
        [(running, done, [b"a", b"b"]), (ghost, transition(ghost, Status.SUCCEEDED, time.time()), [b"x"])]
    )
    assert ok == [True, False]
    stored = store.get(job.id)
    assert stored is not None and stored.status == Status.SUCCEEDED and stored.image_count == 2
    assert images(store, job) == [b"a", b"b", None]
    assert store.get_image(other.id, 0) is None

    # A second worker finishing the same run late: status and images stay the first one's.
    late = transition(running, Status.SUCCEEDED, time.time(), image_count=1, worker="late")
    assert store.store_results([(running, late, [b"late"])]) == [False]
    assert images(store, job) == [b"a", b"b", None]
    assert store.get(job.id).worker == "w"  # type: ignore[union-attr]


def finished_rows(worker: Worker, job: Job, seed: int) -> InFlight[Claimed]:
    req, m = job.request, worker.manifest
    plan = get_plan(m.schedule.to_config(), req.sampler, req.steps)
    cond = Condition.for_class(req.class_label, m.unconditional_class)
    rows = [start_row(plan, seed + i, cond, req.guidance_scale, m.image_shape) for i in range(2)]
    while not all(r.done for r in rows):
        rows = denoise_step(rows, worker.engine.run, m.schedule.prediction_type)
    return InFlight(job, Claimed("0-1", job.id), rows)


def test_a_stalled_worker_finishing_late_changes_nothing(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    job = queued(2)
    store.submit(job)
    # "stalled" claims and starts the job, then stops renewing: another worker takes it over.
    (claimed,) = store.claim(MODEL, "stalled", 1)
    running = transition(job, Status.RUNNING, time.time(), worker="stalled")
    assert store.save_transition(job, running)
    time.sleep(0.6)
    build_worker(worker_settings(valkey, prefix, lease_seconds=0.5, worker_id="w-live")).run(burst=True)
    done = store.get(job.id)
    assert done is not None and done.status == Status.SUCCEEDED and done.worker == "w-live"
    assert done.attempts == 2
    first = images(store, job)
    assert first[:2] != [None, None] and first[2] is None

    # The stalled worker wakes up and finishes its copy; different seeds here, so a write would show.
    stalled = build_worker(worker_settings(valkey, prefix, worker_id="stalled"))
    flight = finished_rows(stalled, running, seed=12345)
    flight.claimed = claimed
    stalled.scheduler.running[job.id] = flight
    stalled._finish_succeeded(flight)

    assert store.get(job.id) == done
    assert images(store, job) == first
    assert job.id not in stalled.scheduler.running
    finished = stalled._metrics.registry.get_sample_value(
        "diffq_jobs_finished_total", {"model": MODEL, "status": "succeeded"}
    )
    assert not finished


def test_the_first_to_finish_a_taken_over_job_is_named_on_its_result(valkey: str, prefix: str) -> None:
    """A stalled worker whose job another worker took over, finishing first: its result stands
    (the same bytes the other would write) and the record names it, not the other worker."""
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    job = queued(3)
    store.submit(job)
    (claimed,) = store.claim(MODEL, "stalled", 1)
    mine = transition(job, Status.RUNNING, time.time(), worker="stalled")
    assert store.save_transition(job, mine)
    # Taken over: back to queued, then running under "other" (which has not finished yet).
    requeued = transition(mine, Status.QUEUED, time.time())
    assert store.save_transition(mine, requeued)
    theirs = transition(requeued, Status.RUNNING, time.time(), worker="other")
    assert store.save_transition(requeued, theirs)

    stalled = build_worker(worker_settings(valkey, prefix, worker_id="stalled"))
    flight = finished_rows(stalled, mine, seed=job.request.seed)
    flight.claimed = claimed
    stalled.scheduler.running[job.id] = flight
    stalled._finish_succeeded(flight)
    done = store.get(job.id)
    assert done is not None and done.status == Status.SUCCEEDED and done.worker == "stalled"
    assert done.attempts == theirs.attempts and done.image_count == 2
