"""The v1 API's request and response bodies (the contract other services code against)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from diffq.jobs import SEED_MAX
from webhooks.addresses import MAX_URL_CHARS, RefusedReceiver, check_url

MAX_PROMPT_CHARS = 2000  # per prompt; the tokenizer truncates far earlier (77 tokens for CLIP)
MAX_SIZE = 4096  # pixels per side, the manifest's own bound; each model serves only its `sizes`
MAX_NUM_IMAGES = 16  # per job

# C0 control characters other than tab, line feed and carriage return, DEL and the C1 controls
# (U+0080-U+009F, among them the 8-bit CSI): never part of a prompt, and a NUL or escape
# sequence would end up in logs and records verbatim.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _no_control_characters(value: str | None) -> str | None:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters (tab and newlines are allowed)")
    return value


PromptText = Annotated[StrictStr | None, AfterValidator(_no_control_characters)]


def _webhook_url(value: str | None) -> str | None:
    if value is not None:
        try:
            check_url(value)
        except RefusedReceiver as e:
            raise ValueError(str(e)) from None
    return value


WebhookUrl = Annotated[StrictStr | None, AfterValidator(_webhook_url)]
WebhookEvent = Literal["started", "succeeded", "failed", "cancelled", "expired"]


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
    num_images: StrictInt = Field(default=1, ge=1, le=MAX_NUM_IMAGES)
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
    webhook: WebhookUrl = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="An http(s) URL POSTed the job view, signed (Standard Webhooks, the key's "
        "secret), at each of `webhook_events`; retried for about a day, at least once each. "
        "Loopback, private and link-local receivers are refused unless the operator allows them.",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        max_length=5,
        description="With `webhook`: which events to send. Default: the terminal ones "
        "(succeeded, failed, cancelled, expired); `started` comes at each attempt's start.",
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
    estimated_start_at: str | None = Field(
        default=None,
        description="A queued job's estimated start: the work queued ahead of it at its priority "
        "and above, at the live workers' measured pace. Null once it started, or with no worker "
        "pace to go by.",
    )
    estimated_finish_at: str | None = Field(
        default=None,
        description="A queued or running job's estimated finish: its start (or now) and its "
        "remaining steps at the workers' step time. Null once terminal, or with no pace.",
    )


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
    webhook: str | None = Field(default=None, description="The URL this job's events are sent to.")
    webhook_events: list[WebhookEvent] | None = Field(default=None, description="The events sent there.")


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


# The OpenAI-compatible Images API (POST /v1/images/generations, ``service/openai_images.py``).

MAX_USER_CHARS = 256  # `user` / `safety_identifier`: accepted, never used (owners are API keys)
# "WxH" in ASCII digits without leading zeros; the model's sizes are checked later.
SIZE_PATTERN = re.compile(r"([1-9][0-9]{0,3})x([1-9][0-9]{0,3})")
UserText = Annotated[StrictStr | None, AfterValidator(_no_control_characters)]
RequiredPrompt = Annotated[StrictStr, AfterValidator(_no_control_characters)]


class ImageGenerationCreate(BaseModel):
    """POST /v1/images/generations, as OpenAI's SDK sends it. Our own parameters (`seed`, `steps`,
    `sampler`, `guidance_scale`, `negative_prompt`) come as extra body fields (the SDK's
    `extra_body`), with the bounds and defaults of POST /v1/jobs. OpenAI's parameters this
    service has no equivalent for are accepted only at a value that changes nothing here."""

    model_config = ConfigDict(extra="forbid")

    prompt: RequiredPrompt = Field(
        max_length=MAX_PROMPT_CHARS,
        description="What to draw (an empty string is legal). No control characters except tab and newlines.",
    )
    model: StrictStr | None = Field(
        default=None,
        max_length=64,
        description="A text-to-image model's name from GET /v1/models; default: the server's.",
    )
    n: StrictInt | None = Field(
        default=None, ge=1, le=MAX_NUM_IMAGES, description="Images to draw; default 1."
    )
    size: StrictStr | None = Field(
        default=None,
        max_length=32,
        description="`WxH`, one of the model's `sizes` (GET /v1/models); `auto` or absent: its native size.",
    )
    response_format: Literal["url", "b64_json"] | None = Field(
        default=None,
        description="`url` (default): the job's image route, which takes the same API key; "
        "`b64_json`: the PNG, base64-encoded.",
    )
    user: UserText = Field(default=None, max_length=MAX_USER_CHARS, description="Accepted, not used.")
    safety_identifier: UserText = Field(
        default=None, max_length=MAX_USER_CHARS, description="Accepted, not used."
    )
    quality: StrictStr | None = Field(
        default=None, max_length=16, description="Only `auto` or `standard`: use `steps` for more work."
    )
    style: StrictStr | None = Field(
        default=None, max_length=16, description="Not offered: any value is refused (say it in the prompt)."
    )
    background: StrictStr | None = Field(
        default=None, max_length=16, description="Only `auto` or `opaque`: images are opaque."
    )
    moderation: StrictStr | None = Field(
        default=None,
        max_length=16,
        description="Not offered: any value is refused (this service moderates nothing).",
    )
    output_format: StrictStr | None = Field(default=None, max_length=16, description="Only `png`.")
    output_compression: StrictInt | None = Field(
        default=None, ge=0, le=100, description="Only 100 (PNGs are not lossy-compressed)."
    )
    stream: StrictBool | None = Field(
        default=None, description="Only false: the answer comes when all images are done."
    )
    partial_images: StrictInt | None = Field(default=None, ge=0, le=3, description="Only 0 (no streaming).")
    negative_prompt: PromptText = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="Extra body field: as in POST /v1/jobs."
    )
    steps: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="Extra body field: as in POST /v1/jobs."
    )
    sampler: StrictStr | None = Field(
        default=None, max_length=32, description="Extra body field: as in POST /v1/jobs."
    )
    guidance_scale: StrictFloat | StrictInt | None = Field(
        default=None, ge=0, le=100, description="Extra body field: as in POST /v1/jobs."
    )
    seed: StrictInt | None = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="Extra body field: as in POST /v1/jobs (image i: seed + i); drawn if absent.",
    )


class ImageData(BaseModel):
    """One image: `url` or `b64_json`, as the request's `response_format` asked."""

    url: str | None = Field(default=None, description="The image's route (GET, with the same API key).")
    b64_json: str | None = Field(default=None, description="The PNG, base64-encoded.")


class ImagesResponse(BaseModel):
    created: int = Field(description="When the images were finished, in Unix seconds.")
    data: list[ImageData]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `requests` (429) or `server_error`.")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(
        description="`invalid_api_key`, `model_not_found`, `unknown_parameter`, `invalid_value`, ..., "
        "or the service's own error type (`rate_limited`, `too_many_waiters`, `job_timeout`, ...)."
    )
    job_id: str | None = Field(
        default=None,
        description="The job the request queued, when it did not answer its images (GET /v1/jobs/{id}).",
    )


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
