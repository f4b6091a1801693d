"""The v1 API's request and response bodies (the contract other services code against)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from diffq.jobs import SEED_MAX


class JobCreate(BaseModel):
    """POST /v1/jobs. Omitted fields take the model's defaults; the seed is drawn if absent."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(
        default=None, max_length=64, description="Model name; default: the server's."
    )
    class_label: StrictInt | None = Field(
        default=None, ge=0, le=1_000_000, description="Class index of the model, or null for unconditional."
    )
    num_images: StrictInt = Field(default=1, ge=1, le=16)
    steps: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="Within the model's step limits."
    )
    sampler: StrictStr | None = Field(default=None, max_length=32, description="One of the model's samplers.")
    guidance_scale: StrictFloat | StrictInt | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Classifier-free guidance; 1 = plain conditional, 0 = unconditional.",
    )
    seed: StrictInt | None = Field(default=None, ge=0, le=SEED_MAX)
    priority: Literal["high", "normal", "low"] = Field(
        default="normal", description="Workers take waiting high jobs before normal, normal before low."
    )
    deadline_seconds: StrictFloat | StrictInt | None = Field(
        default=None,
        gt=0,
        le=86_400,
        description="Seconds from submission; a job not finished by then ends `expired`.",
    )


class EffectiveRequest(BaseModel):
    model: str
    class_label: int | None
    num_images: int
    steps: int
    sampler: str
    guidance_scale: float
    seed: int
    priority: Literal["high", "normal", "low"]
    deadline_seconds: float | None


class Progress(BaseModel):
    step: int
    total: int


class Timings(BaseModel):
    created_at: str
    started_at: str | None
    finished_at: str | None
    deadline_at: str | None
    queue_ms: float | None
    run_ms: float | None
    total_ms: float | None


class ImageRef(BaseModel):
    url: str
    seed: int


class ErrorInfo(BaseModel):
    type: str
    message: str


class JobView(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    request: EffectiveRequest
    progress: Progress
    queue_position: int | None = Field(description="1-based position while queued; null otherwise.")
    cancel_requested: bool
    timings: Timings
    images: list[ImageRef]
    error: ErrorInfo | None


class ImageSpecView(BaseModel):
    channels: int
    height: int
    width: int


class ModelView(BaseModel):
    name: str
    version: str
    classes: list[str]
    samplers: list[str]
    default_sampler: str
    min_steps: int
    max_steps: int
    default_steps: int
    default_guidance_scale: float
    max_guidance_scale: float
    image: ImageSpecView
    prediction_type: str


class ModelList(BaseModel):
    default_model: str
    models: list[ModelView]


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: list[dict[str, object]] | dict[str, object] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)
    workers: dict[str, int] | None = Field(
        default=None, description="Live workers per model (informational: jobs queue without them)."
    )
