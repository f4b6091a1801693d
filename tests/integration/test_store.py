"""The Redis layer against a real Valkey: records, the stream queue, CAS transitions, leases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis

from diffq.errors import Unavailable
from diffq.eta import Pace
from diffq.jobs import Job, JobRequest, Priority, Status, new_job_id, transition
from diffq.serve import free_port
from diffq.store import RedisStore
from tests.integration.conftest import MODEL


def new_job(seed: int = 1, num_images: int = 1) -> Job:
    req = JobRequest(MODEL, 1, num_images, 4, "ddim", 1.0, seed)
    return Job(id=new_job_id(), request=req, status=Status.QUEUED, created_at=time.time())


def test_submit_get_round_trip(store: RedisStore) -> None:
    job = new_job()
    assert store.submit(job).position == 1
    got = store.get(job.id)
    assert got is not None and got.id == job.id
    assert got.request == job.request and got.status == Status.QUEUED
    assert store.get(new_job_id()) is None


def test_claim_positions_depth_and_ack(store: RedisStore) -> None:
    jobs = [new_job(i) for i in range(3)]
    for j in jobs:
        store.submit(j)
    assert [store.queue_position(MODEL, j.id) for j in jobs] == [1, 2, 3]
    assert store.queue_stats(MODEL).depth == 3
    claimed = store.claim(MODEL, "w1", 2)
    assert [c.job_id for c in claimed] == [jobs[0].id, jobs[1].id]
    # A claim carries each job's record: the worker needs no second read.
    assert [c.record.status if c.record else None for c in claimed] == [Status.QUEUED] * 2
    assert store.queue_position(MODEL, jobs[0].id) is None
    assert store.queue_position(MODEL, jobs[2].id) == 1
    assert store.queue_stats(MODEL).depth == 1
    store.ack(MODEL, claimed)
    assert [c.job_id for c in store.claim(MODEL, "w2", 5)] == [jobs[2].id]
    assert store.claim(MODEL, "w2", 5) == []


def test_transition_is_compare_and_set(store: RedisStore) -> None:
    job = new_job()
    store.submit(job)
    running = transition(job, Status.RUNNING, time.time(), worker="w1")
    cancelled = transition(job, Status.CANCELLED, time.time())
    assert store.save_transition(job, cancelled) is True
    # A worker that read "queued" earlier loses: the status moved on.
    assert store.save_transition(job, running) is False
    got = store.get(job.id)
    assert got is not None and got.status == Status.CANCELLED and got.finished_at is not None
    ghost = new_job()  # never submitted (or expired)
    assert store.save_transition(ghost, transition(ghost, Status.RUNNING, time.time())) is False
    assert store.get(ghost.id) is None


def test_fields_cleared_on_requeue(store: RedisStore) -> None:
    job = new_job()
    store.submit(job)
    running = transition(job, Status.RUNNING, time.time(), worker="w1")
    store.save_transition(job, running)
    requeued = transition(running, Status.QUEUED, time.time())
    assert store.save_transition(running, requeued) is True
    got = store.get(job.id)
    assert got is not None and got.worker is None and got.started_at is None and got.attempts == 1


def test_images_and_cancel_flag(store: RedisStore) -> None:
    job = new_job(num_images=2)
    store.submit(job)
    assert len(store.claim(MODEL, "w", 1)) == 1
    running = transition(job, Status.RUNNING, time.time(), worker="w")
    assert store.save_transition(job, running)
    assert store.set_progress({job.id: 1}, time.time()).cancelled == set()
    asyncio.run(store.request_cancel_async(job.id))
    assert store.set_progress({job.id: 2}, time.time()).cancelled == {job.id}
    assert store.get(job.id).step == 2  # type: ignore[union-attr]
    done = transition(running, Status.SUCCEEDED, time.time(), image_count=2)
    assert store.store_results([(running, done, [b"png0", b"png1"])]) == [True]
    assert store.get_image(job.id, 1) == b"png1" and store.get_image(job.id, 2) is None


def test_reclaim_takes_idle_entries_and_renew_keeps_them(store: RedisStore) -> None:
    a, b = new_job(1), new_job(2)
    store.submit(a)
    store.submit(b)
    held = store.claim(MODEL, "dead", 2)
    time.sleep(0.3)
    assert store.renew(MODEL, "dead", [held[1]]) == []  # only b's lease is renewed
    taken = store.reclaim(MODEL, "alive", min_idle_ms=200)
    assert [c.job_id for c in taken] == [a.id]


def test_heartbeats(store: RedisStore) -> None:
    now = time.time()
    store.heartbeat(MODEL, "w1", now - 100)
    store.heartbeat(MODEL, "w2", now)
    assert store.live_workers(MODEL, within_seconds=5, now=now) == 1
    store.remove_worker(MODEL, "w2")
    assert store.live_workers(MODEL, within_seconds=5, now=now) == 0


def test_paces_come_with_heartbeats_and_go_with_their_workers(store: RedisStore) -> None:
    now = time.time()
    store.heartbeat(MODEL, "old", now - 100, Pace(999.0, 9.0))  # a worker gone without a word
    store.heartbeat(MODEL, "w1", now, Pace(120.5, 0.25))
    store.heartbeat(MODEL, "w2", now, Pace(80.0, 0.35))
    store.heartbeat(MODEL, "w3", now)  # no step timed yet: alive, no pace
    store._r.hset(store.keys.pace(MODEL), "w4", f"1 2 three {now}")  # unreadable: counts for nothing
    for j in (new_job(1), new_job(2, num_images=3)):
        store.submit(j)
    backlog = asyncio.run(store.backlog_async(MODEL, within_seconds=10))
    assert (backlog.depth, backlog.evaluations) == (2, 4 + 12)
    assert sorted(backlog.paces, key=lambda p: p.step_seconds) == [Pace(120.5, 0.25), Pace(80.0, 0.35)]
    assert not store._r.hexists(store.keys.pace(MODEL), "old")  # the stale pace was dropped
    store.remove_worker(MODEL, "w1")
    assert asyncio.run(store.backlog_async(MODEL, within_seconds=10)).paces == (Pace(80.0, 0.35),)


def test_unreachable_redis_is_unavailable_quickly() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        store.get(new_job_id())
    assert time.monotonic() - started < 2
    assert info.value.status == 503 and info.value.retry_after == 1
    assert store.ping() is False


def test_progress_and_cancel_never_resurrect_an_expired_record(store: RedisStore) -> None:
    live, gone = new_job(), new_job()
    store.submit(live)
    store.set_progress({live.id: 3, gone.id: 5}, time.time())
    asyncio.run(store.request_cancel_async(gone.id))
    asyncio.run(store.watch_async(gone.id, time.time() + 60))
    got = store.get(live.id)
    assert got is not None and got.step == 3
    assert store.get(gone.id) is None


def test_progress_write_reports_requested_cancels(store: RedisStore) -> None:
    a, b = new_job(), new_job()
    store.submit(a)
    store.submit(b)
    assert store.set_progress({a.id: 1, b.id: 1}, time.time()).cancelled == set()
    asyncio.run(store.request_cancel_async(b.id))
    assert store.set_progress({a.id: 2, b.id: 2}, time.time()).cancelled == {b.id}
    # the flag stays until the job ends
    assert store.set_progress({a.id: 3, b.id: 3}, time.time()).cancelled == {b.id}


def test_watched_jobs_have_their_steps_announced_until_the_mark_lapses(store: RedisStore) -> None:
    """A progress write announces the steps of the jobs an event stream marked watched, on the
    gateway's feed, and tells the worker which they are; a lapsed mark, a terminal job or an
    unwatched one announces nothing."""
    watched, plain, ended = new_job(), new_job(), new_job()
    for j in (watched, plain, ended):
        store.submit(j)
    cancelled = transition(ended, Status.CANCELLED, time.time())
    assert store.save_transition(ended, cancelled)
    now = time.time()

    async def scenario() -> list[tuple[str, int | None, str | None]]:
        feed = await store.job_feed()
        try:
            await store.watch_async(watched.id, now + 10)
            await store.watch_async(watched.id, now + 5)  # an earlier mark does not shorten it
            await store.watch_async(ended.id, now + 10)  # terminal: not marked
            flags = store.set_progress({watched.id: 1, plain.id: 1}, now)
            assert flags.watched == {watched.id} and flags.cancelled == set()
            assert store.set_progress({watched.id: 2}, now + 8).watched == {watched.id}
            assert store.set_progress({watched.id: 3}, now + 11).watched == set()  # lapsed
            store._r.publish(store.keys.done_channel(plain.id), "succeeded")
            got = []
            while len(got) < 3 and (a := await feed.next(timeout=2.0)) is not None:
                got.append((a.job_id, a.step, a.status))
            return got
        finally:
            await feed.aclose()

    assert asyncio.run(scenario()) == [
        (watched.id, 1, None),
        (watched.id, 2, None),
        (plain.id, None, "succeeded"),
    ]
    assert store._r.hget(store.keys.job(ended.id), "watch") is None


def test_a_record_lives_while_its_job_does_then_for_the_ttl(valkey: str, prefix: str) -> None:
    """A job queued or running longer than the TTL is still there (and so are its books);
    once terminal, its record and images expire after the TTL."""
    short = RedisStore(valkey, prefix=prefix, ttl_seconds=1)
    short.ensure_group(MODEL)
    job = new_job()
    short.submit(job)
    time.sleep(1.3)  # queued past the TTL
    queued = short.get(job.id)
    assert queued is not None and queued.status == Status.QUEUED
    running = transition(queued, Status.RUNNING, time.time(), worker="w")
    assert short.save_transition(queued, running)
    time.sleep(1.3)  # running past the TTL
    assert short.get(job.id) is not None
    done = transition(running, Status.SUCCEEDED, time.time(), image_count=1)
    assert short.store_results([(running, done, [b"png"])]) == [True]
    assert short.get(job.id) is not None and short.get_image(job.id, 0) == b"png"
    time.sleep(1.3)  # terminal past the TTL
    assert short.get(job.id) is None and short.get_image(job.id, 0) is None


def test_queue_stats_count_waiting_work_until_claimed(store: RedisStore) -> None:
    empty = store.queue_stats(MODEL)
    assert (empty.depth, empty.evaluations, empty.oldest_age_seconds) == (0, 0, None)
    jobs = [new_job(i, num_images=n) for i, n in enumerate((1, 3, 2))]
    for job in jobs:
        store.submit(job)
    stats = store.queue_stats(MODEL)
    assert stats.depth == 3
    # images x steps: guidance 1.0 is plain conditional, one denoiser row per image.
    assert stats.evaluations == sum(j.request.evaluations for j in jobs) == (1 + 3 + 2) * 4
    assert stats.oldest_age_seconds is not None and 0 <= stats.oldest_age_seconds < 30
    store.claim(MODEL, "w1", 1)
    after = store.queue_stats(MODEL)
    assert (after.depth, after.evaluations) == (2, (3 + 2) * 4)
    # A cancelled job's entry stays in the stream until a worker skips it; it is not work.
    assert store.save_transition(jobs[1], transition(jobs[1], Status.CANCELLED, time.time()))
    assert store.queue_stats(MODEL).evaluations == 2 * 4
    assert store.queue_stats("no-such-model").depth == 0


def test_dead_letters_are_kept_newest_first(store: RedisStore) -> None:
    store.dead_letter(MODEL, "a" * 32, 3)
    store.dead_letter(MODEL, "b" * 32, 4)
    letters = store.dead_letters(MODEL)
    assert [(d["job"], d["attempts"]) for d in letters] == [("b" * 32, "4"), ("a" * 32, "3")]


def test_claims_take_high_before_normal_before_low(store: RedisStore) -> None:
    jobs = {}
    for priority in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.NORMAL):
        job = new_job()
        job = replace(job, request=replace(job.request, priority=priority))
        jobs[job.id] = job
        store.submit(job)
    low, normal, high, normal2 = jobs.values()
    # Positions count the waiting jobs of higher priorities first.
    stored = [store.get(j) for j in jobs]
    positions = [store.queue_position(MODEL, j.id, j.request.priority) for j in stored if j]
    assert positions == [4, 2, 1, 3]
    order = [c for _ in range(4) for c in store.claim(MODEL, "w", 1)]
    assert [c.job_id for c in order] == [high.id, normal.id, normal2.id, low.id]
    assert [c.priority for c in order] == ["high", "normal", "normal", "low"]
    assert store.claim(MODEL, "w", 1) == []


def test_one_claim_spans_priorities_in_order(store: RedisStore) -> None:
    made = []
    for priority in (Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.NORMAL):
        job = new_job()
        made.append(replace(job, request=replace(job.request, priority=priority)))
        store.submit(made[-1])
    low, normal, high, normal2 = made
    first = store.claim(MODEL, "w", 3)
    assert [c.job_id for c in first] == [high.id, normal.id, normal2.id]
    rest = store.claim(MODEL, "w", 3)
    assert [c.job_id for c in rest] == [low.id]  # fewer than asked: the streams are drained


def test_submissions_are_announced_to_subscribed_workers(store: RedisStore) -> None:
    news = store.new_work(MODEL)
    other = store.new_work("another-model")
    try:
        deadline = time.monotonic() + 5
        assert not news.arrived()
        store.submit(new_job())
        while not news.arrived():  # delivered asynchronously: within moments
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert not news.arrived()  # drained
        assert not other.arrived()  # per model
        # Into a queue that is not empty: no news, the workers know jobs wait. Once it is
        # empty again, the next submission is news.
        store.submit(new_job())
        assert len(store.claim(MODEL, "w", 5)) == 2
        time.sleep(0.05)
        assert not news.arrived()
        store.submit(new_job())
        while not news.arrived():
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        news.close()
        other.close()


def test_renew_lets_go_of_entries_another_worker_took(store: RedisStore) -> None:
    a, b = new_job(), new_job()
    store.submit(a)
    store.submit(b)
    held = store.claim(MODEL, "slow", 2)
    time.sleep(0.25)
    taken = store.reclaim(MODEL, "other", min_idle_ms=200, count=1)
    assert [c.job_id for c in taken] == [a.id]
    lost = store.renew(MODEL, "slow", held)
    assert [c.job_id for c in lost] == [a.id]
    # The renewal did not take a's entry back: "other" still holds it.
    assert store.renew(MODEL, "other", taken) == []


def test_batched_transitions_survive_a_lost_script_cache(store: RedisStore, valkey: str) -> None:
    """A restarted server has no scripts: the batched writes load theirs and go on, each job
    still its own compare-and-set."""
    a, b = new_job(1), new_job(2)
    store.submit(a)
    store.submit(b)
    ra = transition(a, Status.RUNNING, time.time(), worker="w")
    assert store.save_transitions([(a, ra)]) == [True]
    redis.Redis.from_url(valkey).script_flush()
    rb = transition(b, Status.RUNNING, time.time(), worker="w")
    # a is running already: its second queued -> running loses; b's wins
    assert store.save_transitions([(a, ra), (b, rb)]) == [False, True]
    redis.Redis.from_url(valkey).script_flush()
    done = transition(rb, Status.SUCCEEDED, time.time(), image_count=1)
    assert store.store_results([(rb, done, [b"png"])]) == [True]
    assert store.get(b.id).status == Status.SUCCEEDED  # type: ignore[union-attr]
    assert store.get_image(b.id, 0) == b"png"


def test_lease_renewals_do_not_count_as_deliveries(store: RedisStore) -> None:
    jobs = [new_job(i) for i in range(2)]
    for j in jobs:
        store.submit(j)
    claimed = store.claim(MODEL, "w1", 2)
    for _ in range(3):
        assert store.renew(MODEL, "w1", claimed) == []
    pending = store._r.xpending_range(store.keys.claimed(MODEL), "workers", "-", "+", 10)
    assert [p["times_delivered"] for p in pending] == [1, 1]


def test_reading_the_backlog_costs_the_same_however_long_it_is(store: RedisStore, valkey: str) -> None:
    """A scrape's queue figures and a job's position are a fixed handful of commands inside
    Valkey, not one per waiting job (the old scan read every entry)."""
    r = redis.Redis.from_url(valkey)

    def commands(read: Callable[[], object]) -> dict[str, int]:
        read()  # the first call also loads the script
        r.config_resetstat()
        read()
        stats = r.info("commandstats")
        return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_config"}

    jobs = [new_job(i) for i in range(400)]
    for job in jobs[:5]:
        store.submit(job)
    short = (
        commands(lambda: store.queue_stats(MODEL)),
        commands(lambda: store.queue_position(MODEL, jobs[4].id)),
    )
    for job in jobs[5:]:
        store.submit(job)
    long = (
        commands(lambda: store.queue_stats(MODEL)),
        commands(lambda: store.queue_position(MODEL, jobs[399].id)),
    )
    assert store.queue_stats(MODEL).depth == 400 and store.queue_position(MODEL, jobs[399].id) == 400
    assert long == short
    assert sum(short[0].values()) <= 8
    r.close()
