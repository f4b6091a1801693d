"""The delivering process (``diffq webhooks run``): due deliveries out of Redis, to receivers.

Any number of these run side by side (replicas): each claims due deliveries under a lease
(``diffq.store.deliveries``), so two never hold the same one, and one that dies holds its
deliveries only until its lease ends. Nothing here holds up a job: the status change queued
its delivery and moved on.

One attempt: the job view (built from the record at the first attempt, then kept, so every
retry sends the same bytes under the same ``webhook-id``), signed with the owner's secrets;
the receiver's host resolved and every address checked (``addresses``); the POST to a checked
address (the name kept for ``Host`` and TLS), no redirects followed, bounded by
``DIFFQ_WEBHOOK_TIMEOUT_SECONDS`` in all, the answer's body never read. A 2xx settles it;
anything else is tried again on the back-off schedule, then is a dead letter. A refused
address is a dead letter at once: it would be refused again.

A receiver (scheme, host, port) has at most ``DIFFQ_WEBHOOK_MAX_IN_FLIGHT_PER_RECEIVER``
deliveries in flight per process; a claimed one past that is put back, due a second later, so
a slow receiver never holds the slots that other receivers' deliveries need.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult

import httpx

from diffq import __version__
from diffq.errors import Unavailable
from diffq.store import Delivery, RedisStore
from service.views import job_view
from webhooks import signing
from webhooks.addresses import RefusedReceiver, check_url, checked_addresses
from webhooks.backoff import retry_delay
from webhooks.config import WebhookSettings
from webhooks.metrics import WebhookMetrics
from webhooks.secrets import WebhookSecrets

log = logging.getLogger("diffq.webhooks")

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]
BUSY_RETRY_SECONDS = 1.0  # a delivery put back because its receiver is at its bound
BACKLOG_SECONDS = 5.0  # how often the queued and dead-letter gauges are read


class Resolver:
    """``getaddrinfo`` on threads of its own, one per delivery in flight: the event loop's
    shared few would let a handful of names whose DNS hangs hold every other delivery's
    lookup (an attempt's timeout ends the wait, not the blocked lookup)."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, "resolve")

    async def __call__(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` (a literal address is itself)."""
        infos = await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        )
        return [str(info[4][0]) for info in infos]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: ``kind`` is one of ``metrics.ATTEMPT_OUTCOMES``."""

    kind: str
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.kind == "delivered"


def receiver(parts: SplitResult) -> str:
    """What the per-receiver bound counts by: scheme, host and port."""
    return f"{parts.scheme}://{parts.hostname}:{parts.port or default_port(parts)}"


def default_port(parts: SplitResult) -> int:
    return 443 if parts.scheme == "https" else 80


def pinned_url(parts: SplitResult, address: str) -> str:
    """The URL with its host replaced by the checked ``address``."""
    host = f"[{address}]" if ":" in address else address
    path = parts.path or "/"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{host}:{parts.port or default_port(parts)}{path}{query}"


class Deliverer:
    def __init__(
        self,
        settings: WebhookSettings,
        store: RedisStore,
        metrics: WebhookMetrics,
        resolve: Resolve | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.secrets: WebhookSecrets = settings.webhook_keys
        self._resolver: Resolver | None = None
        if resolve is None:
            self._resolver = resolve = Resolver(settings.webhook_concurrency)
        self.resolve = resolve
        self.rng = rng or random.Random()
        self.name = settings.webhook_deliverer_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stop = asyncio.Event()
        self.connected = False
        self.last_tick: float | None = None
        self._claims = 0
        self._busy: Counter[str] = Counter()  # receiver -> deliveries in flight to it
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the address checked is the one called
            timeout=httpx.Timeout(settings.webhook_timeout_seconds),
            limits=httpx.Limits(max_connections=settings.webhook_concurrency, max_keepalive_connections=0),
            headers={"user-agent": f"diffq-webhooks/{__version__}"},
        )

    async def run(self) -> None:
        """Deliver until ``stop`` is set, then let the attempts in flight finish."""
        next_backlog = 0.0
        try:
            while not self.stop.is_set():
                self.last_tick = time.monotonic()
                if self.last_tick >= next_backlog:
                    next_backlog = self.last_tick + BACKLOG_SECONDS
                    await self._read_backlog()
                try:
                    claimed = await self._claim_and_start()
                except Unavailable as e:  # settling a refused one: it comes due again
                    log.warning("store unavailable", extra={"error": e.message})
                    claimed = 0
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), self.settings.webhook_poll_seconds)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.settings.lease_seconds)
            await self._client.aclose()
            if self._resolver is not None:
                self._resolver.close()

    async def _read_backlog(self) -> None:
        with contextlib.suppress(Unavailable):
            queued, dead = await self.store.deliveries_backlog_async()
            self.metrics.queued.set(queued)
            self.metrics.dead_letters.set(dead)

    async def _claim_and_start(self) -> int:
        """Claim what there is room for and start each attempt; how many were claimed (those
        put back included: the loop looks again at once while there is work)."""
        free = self.settings.webhook_concurrency - len(self._tasks)
        if free <= 0:
            return 0
        self._claims += 1
        token = f"{self.name}:{self._claims}"
        try:
            claimed = await self.store.claim_deliveries_async(free, self.settings.lease_seconds, token)
            self.connected = True
        except Unavailable as e:
            if self.connected:
                log.warning("store unavailable", extra={"error": e.message})
            self.connected = False
            return 0
        busy: list[tuple[Delivery, float]] = []
        waiting: Counter[str] = Counter()  # receiver -> its deliveries put back by this claim
        now = time.time()
        for d in claimed:
            try:
                parts = check_url(d.url)
            except RefusedReceiver as e:  # queued before this rule, or by hand: never sent
                self.metrics.attempts.labels("refused").inc()
                await self._settle_dead(d, str(e), d.body, d.attempts + 1)
                continue
            where = receiver(parts)
            bound = self.settings.webhook_max_in_flight_per_receiver
            if self._busy[where] >= bound:
                # Due in turns, a bound's worth a second: a receiver with thousands due is not
                # claimed and put back thousands of times a second.
                busy.append((d, now + BUSY_RETRY_SECONDS * (1 + waiting[where] // bound)))
                waiting[where] += 1
                continue
            self._busy[where] += 1
            task = asyncio.create_task(self._deliver(d, parts, where))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if busy:
            with contextlib.suppress(Unavailable):  # else their leases run out, the same
                await self.store.defer_deliveries_async(busy)
            if len(busy) == len(claimed):
                # Only busy receivers' deliveries are due: wait for an attempt to end rather
                # than claim the same ones again at once.
                return 0
        return len(claimed)

    async def _deliver(self, d: Delivery, parts: SplitResult, where: str) -> None:
        self.metrics.in_flight.inc()
        try:
            body = d.body if d.body is not None else await self._body(d)
            if body is None:
                await self._settle_dead(
                    d, "the job's record expired before its first attempt", None, d.attempts
                )
                return
            began = time.monotonic()
            outcome = await self.attempt(d, parts, body)
            self.metrics.attempt_seconds.observe(time.monotonic() - began)
            self.metrics.attempts.labels(outcome.kind).inc()
            attempts = d.attempts + 1
            if outcome.delivered:
                if await self._settle(d, "done"):
                    self.metrics.deliveries.labels("delivered").inc()
                    self.metrics.attempts_per_delivery.observe(attempts)
                    self.metrics.latency.observe(max(0.0, time.time() - d.created_ms / 1000))
                log.info("webhook delivered", extra=self._extra(d, attempts))
                return
            delay = None if outcome.kind == "refused" else retry_delay(attempts, self.rng)
            if delay is None:
                await self._settle_dead(d, outcome.error, body, attempts)
                return
            due = time.time() + delay * self.settings.webhook_backoff_scale
            fields = {"attempts": str(attempts), "error": outcome.error, "body": body.decode()}
            await self._settle(d, "retry", due, fields)
            log.info("webhook attempt failed", extra={**self._extra(d, attempts), "error": outcome.error})
        except Unavailable as e:  # the lease runs out and the delivery comes due again
            log.warning("store unavailable", extra={**self._extra(d, d.attempts), "error": e.message})
        except Exception:  # a bug, not the receiver's fault: logged, and retried at the lease's end
            log.exception("webhook delivery failed", extra=self._extra(d, d.attempts))
        finally:
            self.metrics.in_flight.dec()
            self._busy[where] -= 1
            if self._busy[where] <= 0:
                del self._busy[where]

    async def _body(self, d: Delivery) -> bytes | None:
        """The job view as the webhook's body (None if the record is gone)."""
        job = await self.store.get_async(d.job_id)
        if job is None:
            return None
        return job_view(job, None, self.settings.public_base_url).model_dump_json().encode()

    async def attempt(self, d: Delivery, parts: SplitResult, body: bytes) -> Outcome:
        """One POST of ``body`` to ``d``'s receiver."""
        host, port = parts.hostname or "", parts.port or default_port(parts)
        keys = self.secrets.for_owner(d.owner)
        if not keys:
            return Outcome("refused", f"no webhook secret for key {d.owner!r} (DIFFQ_WEBHOOK_SECRETS)")
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                try:
                    addresses = await self.resolve(host, port)
                except OSError as e:
                    return Outcome("connection_error", f"cannot resolve {host}: {e}")
                try:
                    address = checked_addresses(
                        host, port, lambda _h, _p: addresses, self.settings.webhook_allow_private
                    )[0]
                except RefusedReceiver as e:
                    return Outcome("refused", str(e))
                headers = {
                    **signing.headers(keys, d.id, int(time.time()), body),
                    "content-type": "application/json",
                    "host": parts.netloc.rsplit("@", 1)[-1],
                }
                extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
                request = self._client.build_request(
                    "POST", pinned_url(parts, address), content=body, headers=headers, extensions=extensions
                )
                response = await self._client.send(request, stream=True)
                await response.aclose()  # the answer's body is never read
        except TimeoutError:
            return Outcome("timeout", f"no answer within {self.settings.webhook_timeout_seconds:g} s")
        except httpx.TimeoutException:
            return Outcome("timeout", f"no answer within {self.settings.webhook_timeout_seconds:g} s")
        except httpx.HTTPError as e:
            return Outcome("connection_error", f"{type(e).__name__}: {e}"[:300])
        if 200 <= response.status_code < 300:
            return Outcome("delivered")
        return Outcome("http_error", f"HTTP {response.status_code}")

    async def _settle(
        self, d: Delivery, outcome: str, due_at: float = 0.0, fields: dict[str, str] | None = None
    ) -> bool:
        settled = await self.store.settle_delivery_async(d, outcome, due_at, fields)
        if not settled:
            log.warning("webhook lease lost", extra=self._extra(d, d.attempts))
        return settled

    async def _settle_dead(self, d: Delivery, error: str, body: bytes | None, attempts: int) -> None:
        """Give ``d`` up: a dead letter with its last ``error`` and its ``attempts`` in all."""
        fields = {"attempts": str(attempts), "error": error, "dead_at_ms": str(int(time.time() * 1000))}
        if body is not None:
            fields["body"] = body.decode()
        if await self._settle(d, "dead", fields=fields):
            self.metrics.deliveries.labels("dead_letter").inc()
            self.metrics.attempts_per_delivery.observe(attempts)
        log.warning("webhook dead letter", extra={**self._extra(d, attempts), "error": error})

    @staticmethod
    def _extra(d: Delivery, attempts: int) -> dict[str, object]:
        return {"webhook_id": d.id, "job_id": d.job_id, "event": d.event, "attempts": attempts}
