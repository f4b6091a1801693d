"""The deliverer's Prometheus families, on its own registry, served on ``DIFFQ_WEBHOOK_PORT``.

No receiver, key or job becomes a label: a receiver's URL is the client's to choose.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from diffq.metrics import DURATION_BUCKETS, PREFIX, add_build_info
from webhooks.backoff import MAX_ATTEMPTS

ATTEMPT_OUTCOMES = ("delivered", "http_error", "timeout", "connection_error", "refused")


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        add_build_info(r, "webhooks")
        self.attempts = Counter(
            f"{PREFIX}_webhook_attempts_total",
            "Delivery attempts by outcome: delivered (a 2xx answer), http_error (another answer, "
            "redirects included), timeout, connection_error, refused (the receiver's address is not "
            "allowed).",
            ["outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            f"{PREFIX}_webhook_deliveries_total",
            "Deliveries settled, by outcome: delivered, or dead_letter (every retry failed, the "
            "receiver was refused, or the job's record was gone).",
            ["outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            f"{PREFIX}_webhook_attempt_seconds",
            "One attempt, from resolving the receiver to its answer's headers.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_webhook_delivery_latency_seconds",
            "From the status change to its delivery's 2xx answer (retries included).",
            buckets=(*DURATION_BUCKETS, 1800, 3600, 7200, 21600, 43200, 86400, 172800),
            registry=r,
        )
        self.attempts_per_delivery = Histogram(
            f"{PREFIX}_webhook_delivery_attempts",
            "Attempts a settled delivery took.",
            buckets=tuple(range(1, MAX_ATTEMPTS + 1)),
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_webhook_in_flight", "Deliveries this process is attempting now.", registry=r
        )
        self.queued = Gauge(
            f"{PREFIX}_webhook_queued",
            "Deliveries queued or in flight, all deliverers (read from Redis every few seconds).",
            registry=r,
        )
        self.dead_letters = Gauge(
            f"{PREFIX}_webhook_dead_letters",
            "Dead letters held for an operator (`diffq webhooks dead-letters`, `replay`).",
            registry=r,
        )
        for outcome in ATTEMPT_OUTCOMES:
            self.attempts.labels(outcome)
        for outcome in ("delivered", "dead_letter"):
            self.deliveries.labels(outcome)
