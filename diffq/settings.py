"""Settings shared by every process, read once at start-up from the environment.

Each process builds its settings object in ``main`` and passes it down; nothing reads the
environment at import time. Variables use the ``DIFFQ_`` prefix; ``REDIS_URL``, ``PORT`` and
``WORKERS`` are also accepted bare, as the README promises.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.store import DEFAULT_ROOT


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore", frozen=True)

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

    @property
    def worker_liveness_seconds(self) -> float:
        """A worker whose last heartbeat is older than this counts as gone."""
        return self.heartbeat_seconds * 3 + 1
