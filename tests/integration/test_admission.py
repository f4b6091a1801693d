"""Admission against a real Valkey: in-flight limits per owner, the bound on queued work per
model, idempotent submission (also under concurrent duplicates) and the token bucket."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from diffq.errors import Overloaded, RateLimited, TooManyJobs
from diffq.jobs import Job, JobRequest, Priority, Status, new_job_id, transition
from diffq.store import Limits, RedisStore
from tests.integration.conftest import MODEL


def new_job(owner: str = "alice", num_images: int = 1, seed: int = 1) -> Job:
    req = JobRequest(MODEL, 1, num_images, 4, "ddim", 1.0, seed)  # 4 evaluations per image
    return Job(id=new_job_id(), request=req, status=Status.QUEUED, created_at=time.time(), owner=owner)


def test_in_flight_limit_per_owner_frees_on_terminal(store: RedisStore) -> None:
    limits = Limits(max_in_flight_per_owner=2)
    first, second = new_job(), new_job()
    store.submit(first, limits)
    store.submit(second, limits)
    with pytest.raises(TooManyJobs) as err:
        store.submit(new_job(), limits)
    assert err.value.retry_after and err.value.retry_after > 0
    store.submit(new_job(owner="bob"), limits)  # another owner has its own budget
    assert store.save_transition(first, transition(first, Status.CANCELLED, time.time()))
    store.submit(new_job(), limits)
    assert store.in_flight("alice") == 2 and store.in_flight("bob") == 1


def test_queued_work_bound_counts_only_queued_jobs(store: RedisStore) -> None:
    limits = Limits(max_queued_evaluations=20)
    a, b = new_job(num_images=2), new_job(num_images=3)  # 8 + 12 evaluations
    store.submit(a, limits)
    store.submit(b, limits)
    assert store.queued_work(MODEL) == 20
    with pytest.raises(Overloaded):
        store.submit(new_job(), limits)
    # Starting a job takes its work off the queue; a reclaim back to queued puts it back.
    running = transition(a, Status.RUNNING, time.time(), worker="w")
    assert store.save_transition(a, running)
    assert store.queued_work(MODEL) == 12
    store.submit(new_job(), limits)
    assert store.queued_work(MODEL) == 16
    requeued = transition(running, Status.QUEUED, time.time())
    assert store.save_transition(running, requeued)
    assert store.queued_work(MODEL) == 24
    # A job whose record vanished while queued is taken off by the worker that finds it.
    store.forget_work(MODEL, 24)
    assert store.queued_work(MODEL) == 0
    store.forget_work(MODEL, 5)
    assert store.queued_work(MODEL) == 0  # never negative


def test_idempotent_submission_under_concurrent_duplicates(store: RedisStore) -> None:
    results = []

    def submit() -> None:
        job = new_job()
        got = store.submit(job, idempotency_key="order-17", fingerprint="f1")
        results.append(got.replay_of or job.id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert store.queue_stats(MODEL).depth == 1  # one job enqueued, not eight
    again = store.submit(new_job(), idempotency_key="order-17", fingerprint="other")
    assert again.replay_of == results[0] and again.same_request is False
    # Keys are per owner: bob's "order-17" is his own.
    assert store.submit(new_job(owner="bob"), idempotency_key="order-17", fingerprint="f1").entry_id


def test_token_bucket_allows_a_burst_then_says_when(store: RedisStore) -> None:
    limits = Limits(rate_per_second=2.0, burst=3)
    for _ in range(3):
        store.submit(new_job(owner="carol"), limits)
    with pytest.raises(RateLimited) as err:
        store.submit(new_job(owner="carol"), limits)
    wait = err.value.retry_after
    assert wait is not None and 0 < wait <= 0.5  # one token per 0.5 s
    time.sleep(wait + 0.05)
    store.submit(new_job(owner="carol"), limits)
    store.submit(new_job(owner="dave"), limits)  # per owner
    assert store.in_flight("carol") == 4


def test_a_new_job_learns_its_queue_position(store: RedisStore) -> None:
    first = store.submit(new_job())
    second = store.submit(new_job())
    assert (first.position, second.position) == (1, 2)
    high = new_job()
    high = replace(high, request=replace(high.request, priority=Priority.HIGH))
    assert store.submit(high).position == 1  # ahead of the normal ones
    low = new_job()
    low = replace(low, request=replace(low.request, priority=Priority.LOW))
    assert store.submit(low).position == 4
    store.claim(MODEL, "w", 1, None)  # the high one
    store.claim(MODEL, "w", 1, None)  # then the first normal one
    assert store.submit(new_job()).position == 2


def test_owner_survives_the_round_trip(store: RedisStore) -> None:
    job = replace(new_job(), owner="erin")
    store.submit(job)
    got = store.get(job.id)
    assert got is not None and got.owner == "erin"
