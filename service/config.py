"""Gateway settings (read once in ``main``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from diffq.settings import CommonSettings


class GatewaySettings(CommonSettings):
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
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
    public_base_url: str = Field(
        default="", description="Prefix for image URLs in job views; empty = relative URLs."
    )
