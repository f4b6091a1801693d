"""Gateway settings (read once in ``main``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from diffq.settings import CommonSettings
from service.auth import ApiKeys
from service.tenants import Tenants


class GatewaySettings(CommonSettings):
    port: int = Field(
        default=8000,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "DIFFQ_PORT"),
        description="HTTP port.",
    )
    default_model: str | None = Field(
        default=None, description="Model used when a request names none; default: the first in the store."
    )
    max_body_bytes: int = Field(
        # 64 KiB: both prompts at their 2,000-character bound fit even \u-escaped (12 bytes for
        # a character outside the BMP), with room for the other fields.
        default=64 * 1024,
        ge=256,
        le=1 << 20,
        description="Largest accepted request body.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("DIFFQ_GATEWAY_PROCESSES"),
        description="uvicorn worker processes; metrics are merged across them.",
    )
    max_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        le=600,
        description="Longest `Prefer: wait=N` honoured. A waiting request holds its HTTP connection only: "
        "no thread and no Redis connection (one subscription per process wakes them all).",
    )
    max_waiters_per_key: int = Field(
        default=32,
        ge=1,
        le=1_000_000,
        description="`Prefer: wait` requests and event streams one API key may have open at once, per "
        "gateway process; "
        "past it, 429 too_many_waiters (Retry-After) before anything is done (a submission is not "
        "queued): poll instead, or retry. With auth off every client is the one key `anonymous`.",
    )
    max_waiters: int = Field(
        default=512,
        ge=1,
        le=1_000_000,
        description="`Prefer: wait` requests and event streams one gateway process holds at once, all keys "
        "together; past it, "
        "429 too_many_waiters. Keep it below DIFFQ_MAX_CONNECTIONS, so waiting requests never hold every "
        "connection.",
    )
    event_heartbeat_seconds: float = Field(
        default=15.0,
        ge=0.05,
        le=300,
        description="A job's event stream (GET /v1/jobs/{id}/events) sends a comment this often while "
        "nothing happens (proxies close idle connections), and reads the job's record then.",
    )
    event_stream_seconds: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="Longest an event stream stays open; then it ends and the client resumes with "
        "Last-Event-ID. A stream holds one of the key's waiting places (DIFFQ_MAX_WAITERS_PER_KEY).",
    )
    auth: Literal["required", "off"] = Field(
        default="required",
        description="API keys on /v1/* and /metrics; `make run` turns it off for local use.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an API key even with DIFFQ_AUTH=required: only for a "
        "scraper on a trusted network (the families name models and queue sizes, never jobs). "
        "Otherwise give the scraper a key of its own (`diffq keygen --name prometheus`).",
    )
    api_keys: str = Field(
        default="",
        description="Accepted keys as name:sha256hex, comma-separated (`diffq keygen` makes one).",
    )
    rate_limit_per_second: float = Field(
        default=20.0, ge=0, le=100_000, description="Submissions per second per key; 0 = no limit."
    )
    rate_limit_burst: int = Field(default=40, ge=1, le=1_000_000, description="Token bucket size per key.")
    max_jobs_in_flight_per_key: int = Field(
        default=256, ge=0, le=1_000_000, description="Unfinished jobs one key may hold; 0 = no limit."
    )
    max_queued_evaluations: int = Field(
        default=500_000,
        ge=0,
        le=10**12,
        description="Admission bound per model: denoiser evaluations waiting in its queue; 0 = none.",
    )
    max_queued_evaluations_per_key: int = Field(
        default=200_000,
        ge=0,
        le=10**12,
        description="Denoiser evaluations one key's waiting jobs may hold, all models together; past it, "
        "429 too_much_queued_work (Retry-After). 0 = none. With auth off every client is the one key "
        "`anonymous`.",
    )
    key_weights: str = Field(
        default="",
        description="Shares of the workers, as name=share entries, comma-separated (shares in (0, 1000]; "
        "a key not named has 1). Within a priority, waiting jobs are served in weighted fair order by "
        "denoiser work: a key with share 2 gets twice the evaluations of a key with 1 while both wait.",
    )
    high_priority_keys: str = Field(
        default="",
        description="Key names (comma-separated) that may submit `priority: high`; any other key asking "
        "for it gets 422. With auth off, `high` is open to everyone.",
    )

    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1 << 20,
        description="Largest request line plus headers; past it, 431 request_header_fields_too_large "
        "and the connection closes (counted before parsing, so a huge header costs no parse).",
    )
    max_headers: int = Field(
        default=100, ge=8, le=10_000, description="Most header fields in one request; past it, 431."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A request's line and headers must arrive within this of the connection opening (or "
        "of their first byte after a keep-alive pause); else 408 and close (slow-header clients).",
    )
    body_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description="A request's body must arrive within this of its headers; else 408 and close.",
    )
    keep_alive_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="An idle keep-alive connection closes after this."
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Connections one gateway process holds; past it a new one closes the connection "
        "waiting longest without a request in progress, or, if every one is busy, gets 503 overloaded "
        "(JSON, Retry-After) once its headers are read. The open-files limit is raised to fit.",
    )

    @model_validator(mode="after")
    def _keys_when_auth_is_on(self) -> GatewaySettings:
        keys = ApiKeys.parse(self.api_keys)  # raises with the offending entry
        if self.auth == "required" and not keys.entries:
            raise ValueError(
                "DIFFQ_AUTH=required needs DIFFQ_API_KEYS (name:sha256hex, comma-separated); "
                "`diffq keygen --name NAME` prints a key and its entry, or set DIFFQ_AUTH=off for local use"
            )
        return self

    @model_validator(mode="after")
    def _tenants_name_keys(self) -> GatewaySettings:
        tenants = self.tenants  # raises with the offending entry
        unknown = tenants.unknown({name for _, name in self.keys.entries})
        if self.auth == "required" and unknown:
            raise ValueError(
                f"DIFFQ_KEY_WEIGHTS / DIFFQ_HIGH_PRIORITY_KEYS name keys not in DIFFQ_API_KEYS: {unknown}"
            )
        return self

    @property
    def keys(self) -> ApiKeys:
        return ApiKeys.parse(self.api_keys)

    @property
    def tenants(self) -> Tenants:
        return Tenants.parse(self.key_weights, self.high_priority_keys, open_access=self.auth == "off")
