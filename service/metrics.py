"""The gateway's Prometheus families: requests, submissions, waiting requests, and the queue
read at scrape time.

Request counts are recorded by an ASGI middleware under the route's template
(``/v1/jobs/{job_id}``), never the raw path, so job ids cannot become labels. The queue
families (depth, queued denoiser work, oldest age, live workers) are read from Redis when
scraped, by whichever gateway process answers the scrape, so several processes never report
the same backlog twice.

``diffq_waiters{kind}`` is set by each process's ``Waiters`` (``on_count``) as a ``Prefer: wait``
request (``wait``) or an event stream (``stream``) takes or gives back its waiting place; in
multiprocess mode a scrape sums the live processes' values.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffq.errors import ServiceError
from diffq.metrics import DURATION_BUCKETS, PREFIX, add_build_info, merged_registry, multiprocess_mode
from diffq.store import RedisStore
from service.waiters import KINDS


class GatewayMetrics:
    def __init__(self) -> None:
        # In multiprocess mode values go to files and a scrape merges them (see ``registry``);
        # this registry then only keeps the objects apart from other app instances.
        self.own = CollectorRegistry()
        r = self.own
        add_build_info(r, "gateway")
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route template and status code.",
            ["method", "route", "status_code"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.submitted = Counter(f"{PREFIX}_jobs_submitted", "Jobs accepted (202).", ["model"], registry=r)
        self.finished = Counter(
            f"{PREFIX}_jobs_finished",
            "Jobs that reached a terminal status in the gateway (a queued job cancelled).",
            ["model", "status"],
            registry=r,
        )
        self.waiters = Gauge(
            f"{PREFIX}_waiters",
            "Places held now, summed over the gateway's processes: Prefer: wait requests waiting "
            "(kind=wait) and event streams open (kind=stream).",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",  # each process sets its own count; a scrape adds them
        )
        for kind in KINDS:
            self.waiters.labels(kind).set(0)
        self.queue: Collector | None = None

    def watch_queue(self, store: RedisStore, models: Sequence[str], liveness_seconds: float) -> None:
        self.queue = QueueCollector(store, models, liveness_seconds)
        for model in models:  # export the per-model series at 0 from the start
            self.submitted.labels(model)
            self.finished.labels(model, "cancelled")
        if not multiprocess_mode():
            self.own.register(self.queue)

    def registry(self) -> CollectorRegistry:
        """What a scrape reads: every process's values plus the queue, read now."""
        if not multiprocess_mode():
            return self.own
        merged = merged_registry()
        if self.queue is not None:
            merged.register(self.queue)
        return merged


class QueueCollector(Collector):
    """Queue depth, queued work and live workers per model, read from Redis at scrape time."""

    def __init__(self, store: RedisStore, models: Sequence[str], liveness_seconds: float) -> None:
        self.store = store
        self.models = list(models)
        self.liveness_seconds = liveness_seconds

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not touch Redis

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Jobs waiting for a worker (not yet claimed).", labels=["model"]
        )
        work = GaugeMetricFamily(
            f"{PREFIX}_queue_evaluations",
            "Queued work: denoiser row-evaluations of the waiting jobs (the autoscaling signal).",
            labels=["model"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds",
            "Age of the oldest waiting job; 0 when none waits.",
            labels=["model"],
        )
        live = GaugeMetricFamily(
            f"{PREFIX}_workers_live", "Workers that sent a heartbeat recently.", labels=["model"]
        )
        up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 if the job store answered this scrape.")
        ok = True
        for model in self.models:
            try:
                stats = self.store.queue_stats(model)
                workers = self.store.live_workers(model, self.liveness_seconds)
            except ServiceError:
                ok = False  # Redis down: the scrape still answers, without stale numbers
                continue
            depth.add_metric([model], stats.depth)
            work.add_metric([model], stats.evaluations)
            oldest.add_metric([model], stats.oldest_age_seconds or 0.0)
            live.add_metric([model], workers)
        up.add_metric([], 1 if ok else 0)
        yield from (depth, work, oldest, live, up)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "other"  # clients choose the method string
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_duration.labels(method, route).observe(time.perf_counter() - started)
