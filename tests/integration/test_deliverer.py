"""The deliverer in this process, against a real Valkey and real HTTP receivers on loopback:
what it will not do (follow redirects, wait past its timeout, call a refused address, read a
huge answer) and that a receiver that hangs holds only its own slots."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import RedisStore
from tests.integration.conftest import MODEL
from tests.receivers import Answer, Receiver, status
from webhooks.config import WebhookSettings
from webhooks.deliverer import Deliverer, Outcome
from webhooks.metrics import WebhookMetrics
from webhooks.signing import new_secret

SECRET = new_secret()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def receiver(made: list[Receiver], handle: Callable[[int], Answer]) -> Receiver:
    r = Receiver(handle)
    made.append(r)
    return r


def ok(_n: int) -> Answer:
    return status(200)


def deliverer(store: RedisStore, resolve: Any = None, **settings: Any) -> Deliverer:
    values: dict[str, Any] = {
        "redis_url": store._url,
        "key_prefix": store.keys.prefix,
        "webhook_secrets": f"*={SECRET}",
        "webhook_allow_private": True,
        "webhook_poll_seconds": 0.02,
        **settings,
    }
    return Deliverer(WebhookSettings(**values), store, WebhookMetrics(), resolve)


def finished_job(store: RedisStore, url: str) -> Job:
    """A job with a webhook, cancelled in the queue: its delivery is due now."""
    req = JobRequest(MODEL, 1, 1, 4, "ddim", 1.0, 5)
    job = Job(
        new_job_id(),
        req,
        Status.QUEUED,
        time.time(),
        owner="alice",
        webhook=url,
        webhook_events=("cancelled",),
    )
    store.submit(job)
    assert store.save_transition(job, transition(job, Status.CANCELLED, time.time()))
    return job


async def attempt_once(d: Deliverer, store: RedisStore) -> Outcome:
    """Claim the one due delivery and attempt it."""
    from webhooks.addresses import check_url

    [claimed] = await store.claim_deliveries_async(1, 30, "test:1")
    body = await d._body(claimed)
    assert body is not None
    return await d.attempt(claimed, check_url(claimed.url), body)


def test_redirects_are_not_followed(store: RedisStore, receivers: list[Receiver]) -> None:
    target = receiver(receivers, ok)
    redirect = receiver(receivers, lambda _n: (307, {"location": target.url(), "content-length": "0"}, b""))
    finished_job(store, redirect.url())
    outcome = asyncio.run(attempt_once(deliverer(store), store))
    assert outcome == Outcome("http_error", "HTTP 307")
    assert len(redirect.received) == 1 and target.received == []


def test_an_attempt_ends_at_its_timeout(store: RedisStore, receivers: list[Receiver]) -> None:
    release = threading.Event()

    def slow(_n: int) -> Answer:
        release.wait(30)
        return ok(0)

    r = receiver(receivers, slow)
    finished_job(store, r.url())
    try:
        outcome = asyncio.run(attempt_once(deliverer(store, webhook_timeout_seconds=0.5), store))
    finally:
        release.set()
    assert outcome.kind == "timeout" and len(r.received) == 1


def test_a_huge_answer_is_never_read(store: RedisStore, receivers: list[Receiver]) -> None:
    # 64 MiB declared and sent: the attempt settles on the status line and closes.
    r = receiver(receivers, lambda _n: (200, {"content-length": str(64 << 20)}, b"x" * (64 << 20)))
    finished_job(store, r.url())
    assert asyncio.run(attempt_once(deliverer(store), store)) == Outcome("delivered")


def resolver(table: dict[str, Sequence[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, _port: int) -> Sequence[str]:
        return table[host]

    return resolve


def test_a_name_is_called_at_its_checked_address_with_its_own_host(
    store: RedisStore, receivers: list[Receiver]
) -> None:
    r = receiver(receivers, ok)
    job = finished_job(store, r.url("hooks.example.test"))
    d = deliverer(store, resolver({"hooks.example.test": ["127.0.0.1"]}))
    assert asyncio.run(attempt_once(d, store)) == Outcome("delivered")
    [got] = r.received
    assert got.headers["host"] == f"hooks.example.test:{r.port}"
    assert Webhook(SECRET).verify(got.body, got.headers)["id"] == job.id


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["93.184.215.14", "10.1.2.3"], ["::ffff:169.254.169.254"], ["64:ff9b::a00:1"]],
)
def test_a_name_resolving_to_any_private_address_is_refused(
    store: RedisStore, receivers: list[Receiver], addresses: list[str]
) -> None:
    r = receiver(receivers, ok)
    finished_job(store, r.url("hooks.example.test"))
    d = deliverer(store, resolver({"hooks.example.test": addresses}), webhook_allow_private=False)
    outcome = asyncio.run(attempt_once(d, store))
    assert outcome.kind == "refused" and "hooks.example.test resolves to" in outcome.error
    assert r.received == []


def test_a_hanging_receiver_holds_only_its_own_slots(store: RedisStore, receivers: list[Receiver]) -> None:
    release = threading.Event()

    def hang(_n: int) -> Answer:
        release.wait(60)
        return ok(0)

    stuck, healthy = receiver(receivers, hang), receiver(receivers, ok)
    for _ in range(12):
        finished_job(store, stuck.url())
    fine = [finished_job(store, healthy.url()) for _ in range(3)]
    d = deliverer(
        store, webhook_concurrency=4, webhook_max_in_flight_per_receiver=2, webhook_timeout_seconds=60
    )

    async def scenario() -> None:
        run = asyncio.create_task(d.run())
        deadline = time.monotonic() + 30  # without the bound the stuck receiver holds every slot
        try:
            while len(healthy.received) < len(fine):
                assert time.monotonic() < deadline, (len(healthy.received), len(stuck.received))
                await asyncio.sleep(0.02)
            assert len(stuck.received) == 2  # still hanging: no more than its bound went out
        finally:
            release.set()
            d.stop.set()
            await run

    asyncio.run(scenario())
    assert stuck.most_in_flight == 2
    assert sorted(Webhook(SECRET).verify(r.body, r.headers)["id"] for r in healthy.received) == sorted(
        j.id for j in fine
    )


def test_a_store_that_is_gone_stops_nothing() -> None:
    from diffq.serve import free_port

    gone = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    settings = WebhookSettings(redis_url=gone._url, webhook_secrets=f"*={SECRET}", webhook_poll_seconds=0.02)
    d = Deliverer(settings, gone, WebhookMetrics())

    async def scenario() -> None:
        run = asyncio.create_task(d.run())
        await asyncio.sleep(1.0)
        assert not run.done()  # still looking, not crashed
        d.stop.set()
        await run

    asyncio.run(scenario())
    assert d.connected is False and d.last_tick is not None
