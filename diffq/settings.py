"""Settings shared by every process, read once at start-up from the environment.

Each process builds its settings object in ``main`` and passes it down; nothing reads the
environment at import time. Variables use the ``DIFFQ_`` prefix; ``REDIS_URL``, ``PORT`` and
``WORKERS`` are also accepted bare, as the README promises.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.store import DEFAULT_ROOT
from webhooks.secrets import WebhookSecrets


def redacted_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to print or log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class CommonSettings(BaseSettings):
    # hide_input_in_errors: a validation error never echoes a value (a Redis URL's password,
    # an API key list) to the terminal or a log.
    model_config = SettingsConfigDict(
        env_prefix="DIFFQ_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "DIFFQ_REDIS_URL"),
        description="Redis (or Valkey) URL holding the queue, job records and results.",
    )
    key_prefix: str = Field(
        default="diffq", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Redis key prefix."
    )
    result_ttl_seconds: int = Field(
        default=3600,
        ge=1,
        le=30 * 86400,
        description="How long job records and images live once the job has ended (queued and "
        "running jobs never expire).",
    )
    model_store: Path = Field(default=DEFAULT_ROOT, description="Root of the model store.")
    redis_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Socket timeout for Redis calls; past it, requests fail with 503.",
    )
    heartbeat_seconds: float = Field(
        default=2.0, gt=0, le=60, description="How often workers report they are alive."
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    host: str = Field(
        default="127.0.0.1",
        description="Address the process's HTTP server listens on (0.0.0.0 in containers).",
    )

    public_base_url: str = Field(
        default="",
        description="Prefix for image URLs in job views (and in webhook bodies); empty = relative URLs.",
    )
    webhook_secrets: str = Field(
        default="",
        description="Secrets signing each API key's webhooks, `NAME=whsec_...` comma-separated (NAME a key "
        "name, `anonymous` with auth off, or `*` for every key without its own; `new|old` during a "
        "rotation). `diffq webhooks secret` prints one. A key without one may not ask for webhooks.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhooks reach loopback, private, link-local and other non-public addresses "
        "(receivers inside your own network, tests). Off: such URLs are refused at submission (a "
        "literal address) or at delivery (a name resolving to one).",
    )

    @field_validator("webhook_secrets")
    @classmethod
    def _webhook_secrets(cls, spec: str) -> str:
        WebhookSecrets.parse(spec)  # raises with the entry at fault, never a secret
        return spec

    @property
    def webhook_keys(self) -> WebhookSecrets:
        """The parsed secrets (parsed again on each read: keep the result)."""
        return WebhookSecrets.parse(self.webhook_secrets)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError as e:
            raise ValueError(f"REDIS_URL {redacted_url(url)} is not a valid URL ({e})") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"REDIS_URL {redacted_url(url)}: the scheme must be redis://, rediss:// or unix://"
            )
        return url

    @property
    def worker_liveness_seconds(self) -> float:
        """A worker whose last heartbeat is older than this counts as gone."""
        return self.heartbeat_seconds * 3 + 1
