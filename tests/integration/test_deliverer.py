"""The deliverer in this process, against a real Valkey and real HTTP receivers on loopback:
what it will not do (follow redirects, wait past its timeout, call a refused address, read a
huge answer) and that a receiver that hangs holds only its own slots."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import RedisStore
from tests.integration.conftest import MODEL
from webhooks.config import WebhookSettings
from webhooks.deliverer import Deliverer, Outcome
from webhooks.metrics import WebhookMetrics
from webhooks.signing import new_secret

SECRET = new_secret()


class Receiver:
    """Records each POST (its headers) and answers with ``handle``'s (status, headers, body)."""

    def __init__(self, handle: Callable[[int], tuple[int, dict[str, str], bytes]]) -> None:
        self.handle = handle
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    status, headers, payload = receiver.handle(n)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.server.shutdown()


def receiver(made: list[Receiver], handle: Callable[[int], tuple[int, dict[str, str], bytes]]) -> Receiver:
    r = Receiver(handle)
    made.append(r)
    return r


def ok(_n: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {"content-length": "0"}, b""


def deliverer(store: RedisStore, resolve: Any = None, **settings: Any) -> Deliverer:
    values: dict[str, Any] = {
        "redis_url": store._url,
        "key_prefix": store.keys.prefix,
        "webhook_secrets": f"*={SECRET}",
        "webhook_allow_private": True,
        "webhook_poll_seconds": 0.02,
        **settings,
    }
    d = Deliverer(WebhookSettings(**values), store, WebhookMetrics())
    if resolve is not None:
        d.resolve = resolve
    return d


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
    assert len(redirect.requests) == 1 and target.requests == []


def test_an_attempt_ends_at_its_timeout(store: RedisStore, receivers: list[Receiver]) -> None:
    release = threading.Event()

    def slow(_n: int) -> tuple[int, dict[str, str], bytes]:
        release.wait(30)
        return ok(0)

    r = receiver(receivers, slow)
    finished_job(store, r.url())
    try:
        outcome = asyncio.run(attempt_once(deliverer(store, webhook_timeout_seconds=0.5), store))
    finally:
        release.set()
    assert outcome.kind == "timeout" and len(r.requests) == 1


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
    [(headers, body)] = r.requests
    assert headers["host"] == f"hooks.example.test:{r.port}"
    assert Webhook(SECRET).verify(body, headers)["id"] == job.id


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
    assert r.requests == []


def test_a_hanging_receiver_holds_only_its_own_slots(store: RedisStore, receivers: list[Receiver]) -> None:
    release = threading.Event()

    def hang(_n: int) -> tuple[int, dict[str, str], bytes]:
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
            while len(healthy.requests) < len(fine):
                assert time.monotonic() < deadline, (len(healthy.requests), len(stuck.requests))
                await asyncio.sleep(0.02)
            assert len(stuck.requests) == 2  # still hanging: no more than its bound went out
        finally:
            release.set()
            d.stop.set()
            await run

    asyncio.run(scenario())
    assert stuck.most_in_flight == 2
    assert sorted(Webhook(SECRET).verify(b, h)["id"] for h, b in healthy.requests) == sorted(
        j.id for j in fine
    )
