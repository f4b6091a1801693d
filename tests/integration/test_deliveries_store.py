"""Webhook deliveries in the Redis layer, against a real Valkey: a status change queues its
delivery in the same script, claims are leases, settling needs the lease, dead letters replay."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import Delivery, RedisStore
from tests.integration.conftest import MODEL


def hooked_job(events: tuple[str, ...] = ("succeeded", "failed", "cancelled", "expired")) -> Job:
    req = JobRequest(MODEL, 1, 1, 4, "ddim", 1.0, 5)
    return Job(
        id=new_job_id(),
        request=req,
        status=Status.QUEUED,
        created_at=time.time(),
        owner="alice",
        webhook="https://hooks.example.com/diffq?x=1",
        webhook_events=events,
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def due(store: RedisStore) -> list[str]:
    return [m.decode() for m in store._r.zrange(store.keys.deliveries_due, 0, -1)]


def test_the_record_keeps_its_webhook(store: RedisStore) -> None:
    job = hooked_job(("started", "succeeded"))
    store.submit(job)
    got = store.get(job.id)
    assert got is not None and got.webhook == job.webhook and got.webhook_events == ("started", "succeeded")


def test_a_status_change_queues_the_events_asked_for(store: RedisStore) -> None:
    job = hooked_job(("started", "succeeded"))
    store.submit(job)
    assert due(store) == []  # queued is no event
    running = transition(job, Status.RUNNING, time.time(), worker="w1")
    assert store.save_transition(job, running)
    assert due(store) == [f"msg_{job.id}_started_1"]
    # Back in the queue (a reclaim) and running again: a second started, its own id.
    requeued = transition(running, Status.QUEUED, time.time())
    assert store.save_transition(running, requeued)
    again = transition(requeued, Status.RUNNING, time.time(), worker="w2")
    assert store.save_transition(requeued, again)
    done = transition(again, Status.SUCCEEDED, time.time(), image_count=1)
    assert store.store_results([(again, done, [b"png"])]) == [True]
    assert sorted(due(store)) == sorted(
        [f"msg_{job.id}_started_1", f"msg_{job.id}_started_2", f"msg_{job.id}_succeeded"]
    )
    fields = store._r.hgetall(store.keys.delivery(f"msg_{job.id}_succeeded"))
    assert fields[b"job"] == job.id.encode() and fields[b"event"] == b"succeeded"
    assert fields[b"url"] == job.webhook.encode() and fields[b"owner"] == b"alice"  # type: ignore[union-attr]
    # A lost compare-and-set queues nothing.
    assert store.save_transition(again, transition(again, Status.FAILED, time.time())) is False
    assert len(due(store)) == 3


def test_events_not_asked_for_and_jobs_without_webhooks_queue_nothing(store: RedisStore) -> None:
    job = hooked_job(("succeeded",))
    plain = replace(hooked_job(), id=new_job_id(), webhook=None, webhook_events=())
    for j in (job, plain):
        store.submit(j)
        assert store.save_transition(j, transition(j, Status.CANCELLED, time.time()))
    assert due(store) == []


def test_claims_are_leases_and_settling_needs_the_lease(store: RedisStore) -> None:
    job = hooked_job()
    store.submit(job)
    store.save_transition(job, transition(job, Status.CANCELLED, time.time()))
    [d] = run(store.claim_deliveries_async(10, 0.3, "a:1"))
    assert (d.job_id, d.event, d.url, d.owner, d.attempts, d.body) == (
        job.id,
        "cancelled",
        job.webhook,
        "alice",
        0,
        None,
    )
    assert run(store.claim_deliveries_async(10, 0.3, "b:1")) == []  # leased
    time.sleep(0.4)
    [again] = run(store.claim_deliveries_async(10, 30, "b:2"))  # the lease ran out: b takes it
    assert again.id == d.id and again.token == "b:2"
    assert run(store.settle_delivery_async(d, "done")) is False  # a's lease is gone: nothing changes
    retry_at = time.time() + 0.2
    fields = {"attempts": "1", "error": "HTTP 503", "body": '{"id":"x"}'}
    assert run(store.settle_delivery_async(again, "retry", retry_at, fields)) is True
    assert run(store.claim_deliveries_async(10, 30, "c:1")) == []  # not due yet
    time.sleep(0.3)
    [third] = run(store.claim_deliveries_async(10, 30, "c:2"))
    assert third.attempts == 1 and third.body == b'{"id":"x"}'
    assert run(store.settle_delivery_async(third, "done")) is True
    assert due(store) == [] and not store._r.exists(store.keys.delivery(d.id))
    assert run(store.deliveries_backlog_async()) == (0, 0)


def test_dead_letters_list_and_replay(store: RedisStore) -> None:
    job = hooked_job()
    store.submit(job)
    store.save_transition(job, transition(job, Status.CANCELLED, time.time()))
    [d] = run(store.claim_deliveries_async(10, 30, "a:1"))
    fields = {"attempts": "8", "error": "HTTP 500", "body": json.dumps({"id": job.id}, separators=(",", ":"))}
    assert run(store.settle_delivery_async(d, "dead", fields=fields)) is True
    assert due(store) == [] and run(store.deliveries_backlog_async()) == (0, 1)
    [letter] = store.dead_deliveries()
    assert letter["id"] == d.id and letter["error"] == "HTTP 500" and letter["attempts"] == "8"
    assert letter["body"] == {"id": job.id} and letter["url"] == job.webhook and "lease" not in letter
    assert store.replay_delivery(letter["entry"]) is True
    assert store.replay_delivery(letter["entry"]) is False  # gone from the dead letters
    [back] = run(store.claim_deliveries_async(10, 30, "b:1"))
    assert (back.id, back.attempts, back.body) == (d.id, 0, f'{{"id":"{job.id}"}}'.encode())
    assert run(store.deliveries_backlog_async()) == (1, 0)


def test_deferring_puts_back_only_what_the_lease_holds_each_at_its_time(store: RedisStore) -> None:
    for _ in range(3):
        job = hooked_job()
        store.submit(job)
        store.save_transition(job, transition(job, Status.CANCELLED, time.time()))
    claimed = run(store.claim_deliveries_async(10, 30, "a:1"))
    assert len(claimed) == 3
    stolen = replace(claimed[2], token="someone-else")
    now = time.time()
    put_back = [(claimed[0], now + 1), (claimed[1], now + 2), (stolen, now + 3)]
    assert run(store.defer_deliveries_async(put_back)) == 2

    def score(d: Delivery) -> float:
        return float(store._r.zscore(store.keys.deliveries_due, d.id)) / 1000

    assert score(claimed[0]) == pytest.approx(now + 1, abs=0.01)
    assert score(claimed[1]) == pytest.approx(now + 2, abs=0.01)
    assert score(claimed[2]) > now + 20  # still leased to a:1, for 30 s
    assert [d.attempts for d in run(store.claim_deliveries_async(10, 30, "b:1"))] == []  # none due yet
