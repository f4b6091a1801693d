"""The delivering process's settings (``diffq webhooks run``), read once in ``main``."""

from __future__ import annotations

from pydantic import Field

from diffq.settings import CommonSettings


class WebhookSettings(CommonSettings):
    webhook_port: int = Field(
        default=9300,
        ge=1,
        le=65535,
        description="The deliverer's probes (`/livez`, `/readyz`) and `/metrics`.",
    )
    webhook_concurrency: int = Field(
        default=64, ge=1, le=10_000, description="Deliveries one deliverer process has in flight at once."
    )
    webhook_max_in_flight_per_receiver: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Deliveries in flight to one receiver (scheme, host and port) per deliverer; more "
        "for it wait their turn (a second later), so a slow receiver holds only these.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="One delivery attempt, connecting to the last header of the answer (the answer's "
        "body is not read); past it the attempt failed.",
    )
    webhook_backoff_scale: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Multiplies the retry schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, with "
        "jitter); tests shorten it.",
    )
    webhook_poll_seconds: float = Field(
        default=0.2, gt=0, le=10, description="How often an idle deliverer looks for due deliveries."
    )
    webhook_deliverer_id: str = Field(
        default="",
        max_length=128,
        description="Names this deliverer in its leases and logs; default host-pid.",
    )

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery is this process's: its attempt's bound and a margin.
        A deliverer that died holds its deliveries no longer than this."""
        return self.webhook_timeout_seconds * 2 + 5
