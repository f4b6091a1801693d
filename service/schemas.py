"""The v1 API's request and response bodies (the contract other services code against)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from diffq.jobs import SEED_MAX

MAX_PROMPT_CHARS = 2000  # per prompt; the tokenizer truncates far earlier (77 tokens for CLIP)
MAX_SIZE = 4096  # pixels per side, the manifest's own bound; each model serves only its `sizes`

# C0 control characters other than tab, line feed and carriage return, DEL and the C1 controls
# (U+0080-U+009F, among them the 8-bit CSI): never part of a prompt, and a NUL or escape
# sequence would end up in logs and records verbatim.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _no_control_characters(value: str | None) -> str | None:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters (tab and newlines are allowed)")
    return value


PromptText = Annotated[StrictStr | None, AfterValidator(_no_control_characters)]


class JobCreate(BaseModel):
    """POST /v1/jobs. Omitted fields take the model's defaults; the seed is drawn if absent."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(
        default=None, max_length=64, description="Model name; default: the server's."
    )
    class_label: StrictInt | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Class-conditional models: class index, or null for unconditional. "
        "Refused by text-to-image models.",
    )
    prompt: PromptText = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="Text-to-image models (required there, refused by class models): what to draw. "
        "An empty string is a legal prompt. The worker tokenizes it and truncates it at the "
        "model's `max_prompt_tokens`. No control characters except tab and newlines.",
    )
    negative_prompt: PromptText = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="Text-to-image models, optional: what guidance steers away from "
        "(absent: the empty prompt). Same rules as `prompt`.",
    )
    width: StrictInt | None = Field(
        default=None,
        ge=1,
        le=MAX_SIZE,
        description="Output width in pixels, with `height`: one of the model's `sizes`; "
        "both absent: the model's native size.",
    )
    height: StrictInt | None = Field(
        default=None, ge=1, le=MAX_SIZE, description="Output height in pixels, with `width`."
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
    prompt: str | None
    negative_prompt: str | None
    width: int | None = Field(description="Output size in pixels; null only for jobs queued before sizes.")
    height: int | None
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


class SizeView(BaseModel):
    width: int
    height: int


class ModelView(BaseModel):
    name: str
    version: str
    kind: Literal["class-conditional", "text-to-image"] = Field(
        description="class-conditional: requests take `class_label`; text-to-image: `prompt` "
        "(and `negative_prompt`)."
    )
    classes: list[str] = Field(description="Class names by index; empty for text-to-image models.")
    sizes: list[SizeView] = Field(description="Output sizes a request may ask for; the native one first.")
    max_prompt_length: int | None = Field(
        description="Characters accepted per prompt; null: the model takes no prompt."
    )
    max_prompt_tokens: int | None = Field(
        description="Tokens of a prompt the model reads (special tokens included); the rest is "
        "cut off. Null: the model takes no prompt."
    )
    samplers: list[str]
    default_sampler: str
    min_steps: int
    max_steps: int
    default_steps: int
    default_guidance_scale: float
    max_guidance_scale: float
    image: ImageSpecView = Field(description="The native output image.")
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
