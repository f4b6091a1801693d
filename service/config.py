"""Gateway settings (read once in ``main``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from diffq.settings import CommonSettings


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
        default=16 * 1024, ge=256, le=1 << 20, description="Largest accepted request body."
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias=AliasChoices("DIFFQ_GATEWAY_PROCESSES"),
        description="uvicorn worker processes; metrics are merged across them.",
    )
    public_base_url: str = Field(
        default="", description="Prefix for image URLs in job views; empty = relative URLs."
    )
