"""Admission against a real Valkey: in-flight limits per owner, the bound on queued work per
model, idempotent submission (also under concurrent duplicates) and the token bucket."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from diffq.errors import Overloaded, RateLimited, TooManyJobs, TooMuchQueuedWork
from diffq.jobs import Job, JobRequest, Priority, Status, new_job_id, transition
from diffq.store import Limits, RedisStore
from tests.integration.conftest import MODEL


def new_job(owner: str = "alice", num_images: int = 1, seed: int = 1) -> Job:
    req = JobRequest(MODEL, 1, num_images, 4, "ddim", 1.0, seed)  # 4 evaluations per image
    return Job(id=new_job_id(), request=req, status=Status.QUEUED, created_at=time.time(), owner=owner)


def in_flight(store: RedisStore, owner: str) -> int:
    return int(store._r.zcard(store.keys.inflight(owner)))


def queued_work(store: RedisStore) -> int:
    return store.queue_stats(MODEL).evaluations


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
    assert in_flight(store, "alice") == 2 and in_flight(store, "bob") == 1


def test_queued_work_bound_counts_only_queued_jobs(store: RedisStore) -> None:
    limits = Limits(max_queued_evaluations=20)
    a, b = new_job(num_images=2), new_job(num_images=3)  # 8 + 12 evaluations
    store.submit(a, limits)
    store.submit(b, limits)
    assert queued_work(store) == 20
    with pytest.raises(Overloaded):
        store.submit(new_job(), limits)
    # A claim takes its job's work off the queue; a cancel of a waiting job too.
    (claimed,) = store.claim(MODEL, "w", 1)
    assert claimed.job_id == a.id and queued_work(store) == 12
    c = new_job()
    store.submit(c, limits)
    assert queued_work(store) == 16
    assert store.save_transition(c, transition(c, Status.CANCELLED, time.time()))
    assert queued_work(store) == 12
    # A claimed job going back to queued (a reclaim, run at once by the reclaiming worker) is
    # held by that worker, not waiting: it does not count again.
    running = transition(a, Status.RUNNING, time.time(), worker="w")
    assert store.save_transition(a, running)
    assert store.save_transition(running, transition(running, Status.QUEUED, time.time()))
    assert queued_work(store) == 12
    assert store.save_transition(b, transition(b, Status.CANCELLED, time.time()))
    assert queued_work(store) == 0 and store.queue_stats(MODEL).depth == 0


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
    assert store.submit(new_job(owner="bob"), idempotency_key="order-17", fingerprint="f1").position


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
    assert in_flight(store, "carol") == 4


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
    store.claim(MODEL, "w", 1)  # the high one
    store.claim(MODEL, "w", 1)  # then the first normal one
    assert store.submit(new_job()).position == 2


def test_owner_survives_the_round_trip(store: RedisStore) -> None:
    job = replace(new_job(), owner="erin")
    store.submit(job)
    got = store.get(job.id)
    assert got is not None and got.owner == "erin"


def test_a_light_key_is_not_held_behind_a_heavy_keys_backlog(store: RedisStore) -> None:
    """Fair order by work: bob's one small job, submitted after alice's big backlog, is
    claimed right after the job a worker is on, not after all of alice's."""
    heavy = [new_job(owner="alice", num_images=8) for _ in range(6)]  # 32 evaluations each
    for job in heavy:
        store.submit(job)
    (first,) = store.claim(MODEL, "w", 1)
    assert first.job_id == heavy[0].id
    light = new_job(owner="bob")  # 4 evaluations
    assert store.submit(light).position == 1  # ahead of alice's five waiting jobs
    order = [c.job_id for c in store.claim(MODEL, "w", 10)]
    assert order == [light.id, *(j.id for j in heavy[1:])]  # alice's keep their own order


def test_weights_share_the_workers_by_work(store: RedisStore) -> None:
    """While both wait, a key of weight 3 gets three times the evaluations of a key of 1."""
    heavy, light = Limits(weight=3.0), Limits(weight=1.0)
    jobs = {}
    for _ in range(12):
        for owner, limits in (("alice", heavy), ("bob", light)):
            job = new_job(owner=owner)
            store.submit(job, limits)
            jobs[job.id] = owner
    first = [jobs[c.job_id] for c in store.claim(MODEL, "w", 8)]
    assert first.count("alice") == 6 and first.count("bob") == 2
    # Submission order alone would alternate them: alice, bob, alice, bob...


def test_each_key_has_a_cap_on_its_waiting_work(store: RedisStore) -> None:
    limits = Limits(max_queued_evaluations_per_owner=8)
    store.submit(new_job(owner="alice"), limits)
    store.submit(new_job(owner="alice"), limits)
    with pytest.raises(TooMuchQueuedWork) as err:
        store.submit(new_job(owner="alice"), limits)
    assert err.value.retry_after and err.value.status == 429
    store.submit(new_job(owner="bob"), limits)  # bob's share is his own
    # alice's first and bob's (equal in the fair order) start: alice's waiting work drops
    assert len(store.claim(MODEL, "w", 2)) == 2
    store.submit(new_job(owner="alice"), limits)


def test_unfinished_jobs_count_however_long_they_wait(valkey: str, prefix: str) -> None:
    """The in-flight limit counts a job queued longer than the record TTL: it is still
    unfinished, and still the owner's."""
    short = RedisStore(valkey, prefix=prefix, ttl_seconds=1)
    limits = Limits(max_in_flight_per_owner=1)
    short.submit(new_job(), limits)
    time.sleep(1.3)
    with pytest.raises(TooManyJobs):
        short.submit(new_job(), limits)
