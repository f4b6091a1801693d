"""What the gateway's routes share, built once at start-up."""

from __future__ import annotations

from diffq.store import Limits, RedisStore
from model_store.manifest import Manifest
from service.config import GatewaySettings
from service.estimates import Estimates
from service.metrics import GatewayMetrics
from service.waiters import Waiters


class State:
    """The settings, the job store, the served models and what is built from them."""

    def __init__(self, settings: GatewaySettings, store: RedisStore, models: dict[str, Manifest]) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.keys = settings.keys
        self.tenants = settings.tenants
        self.webhook_secrets = settings.webhook_keys
        self.limits = Limits(
            settings.max_jobs_in_flight_per_key,
            settings.max_queued_evaluations,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            settings.max_queued_evaluations_per_key,
        )
        self.metrics = GatewayMetrics()
        self.waiters = Waiters(
            store,
            settings.max_waiters_per_key,
            settings.max_waiters,
            on_count=lambda kind, n: self.metrics.waiters.labels(kind).set(n),
        )
        self.estimates = Estimates(store, settings.worker_liveness_seconds)
        self.metrics.watch_queue(store, list(models), settings.worker_liveness_seconds)
        self.default_model = settings.default_model or next(iter(models))
        if self.default_model not in models:
            raise ValueError(f"default model {self.default_model!r} is not in the model store")
