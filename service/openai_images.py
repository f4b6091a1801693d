"""OpenAI's Images API (POST /v1/images/generations) over the job routes' operations: the request
becomes a ``JobCreate``, queued by ``job_ops.submit`` (the same auth, rate limits, admission,
fairness and ownership as POST /v1/jobs), waited on up to the server's bound, and answered with
its images. Errors are raised as ``OpenAIError`` (``service/openai_errors.py``)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from diffq.errors import ServiceError
from diffq.jobs import Job, Status
from model_store.manifest import Manifest
from service import job_ops
from service.deps import ClientGone
from service.openai_errors import NO_RETRY, OpenAIError, invalid
from service.schemas import SIZE_PATTERN, ImageData, ImageGenerationCreate, ImagesResponse, JobCreate
from service.state import State
from service.views import image_url

# OpenAI's parameters with no equivalent here: the values accepted (those that change nothing
# in what this service draws) and why any other is refused. Null is the same as absent.
OPENAI_ONLY: dict[str, tuple[tuple[object, ...], str]] = {
    "quality": (("auto", "standard"), "quality tiers are not offered; send the extra body field steps"),
    "style": ((), "styles are not offered; describe the style in the prompt"),
    "background": (("auto", "opaque"), "images are drawn opaque; transparency is not offered"),
    "moderation": ((), "this service does no content moderation; omit moderation"),
    "output_format": (("png",), "images are PNG"),
    "output_compression": ((100,), "images are PNG, which is not lossy-compressed; omit output_compression"),
    "stream": ((False,), "streaming is not offered; the answer comes when every image is done"),
    "partial_images": ((0,), "partial images need streaming, which is not offered"),
}


@dataclass(frozen=True)
class Generated:
    body: ImagesResponse
    headers: dict[str, str]


def to_job(body: ImageGenerationCreate, models: dict[str, Manifest], default_model: str) -> JobCreate:
    """The POST /v1/jobs body this request stands for; OpenAIError for what it cannot be."""
    for name, (accepted, why) in OPENAI_ONLY.items():
        value = getattr(body, name)
        if value is not None and value not in accepted:
            allowed = f" (accepted: {', '.join(map(_json, accepted))})" if accepted else ""
            raise invalid(name, f"{_json(value)} is not supported: {why}{allowed}", "unsupported_value")
    name = body.model or default_model
    manifest = models.get(name)
    if manifest is None:
        raise OpenAIError(
            404,
            f"the model {name!r} does not exist; GET /v1/models lists the served models",
            param="model",
            code="model_not_found",
        )
    if manifest.kind != "text-to-image":
        raise invalid(
            "model",
            f"{name} is a {manifest.kind} model; the Images API draws from text-to-image models "
            "only (submit class_label through POST /v1/jobs)",
            "model_not_supported",
        )
    width, height = _size(body.size, manifest)
    return JobCreate(
        model=name,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        num_images=body.n or 1,
        steps=body.steps,
        sampler=body.sampler,
        guidance_scale=body.guidance_scale,
        seed=body.seed,
    )


async def generate(
    state: State,
    body: ImageGenerationCreate,
    owner: str,
    *,
    idempotency_key: str | None,
    gone: ClientGone,
) -> Generated:
    """Queue the job, wait for it (holding one of the key's waiting places, taken before it is
    queued, as for ``Prefer: wait``: past the bound, a 429 and nothing queued) and answer its
    images; OpenAIError if it did not succeed within DIFFQ_MAX_WAIT_SECONDS."""
    job_body = to_job(body, state.models, state.default_model)
    wait = state.settings.max_wait_seconds
    with state.waiters.slot(owner, instead="submit through POST /v1/jobs and poll the job"):
        answer = await job_ops.submit(
            state, job_body, owner, idempotency_key=idempotency_key, wait=wait, gone=gone
        )
    job = answer.job
    if answer.client_gone and idempotency_key is None:
        await _abandon(state, job, owner)
    headers = {k: v for k, v in answer.headers.items() if k in ("Location", "Idempotent-Replayed")}
    _check_succeeded(job, wait, headers)
    if body.response_format == "b64_json":
        pngs = await _images(state, job)
        data = [ImageData(b64_json=base64.b64encode(png).decode()) for png in pngs]
    else:
        base = state.settings.public_base_url
        data = [ImageData(url=image_url(job.id, i, base)) for i in range(job.image_count)]
    created = int(job.finished_at if job.finished_at is not None else time.time())
    return Generated(ImagesResponse(created=created, data=data), headers)


async def _abandon(state: State, job: Job, owner: str) -> None:
    """Cancel the job of a client that went away before it was done: it never learnt the job's
    id, so nobody can fetch its images (an SDK's own timeout then retries with a new job). With an
    Idempotency-Key the job stays: the client's retry finds it."""
    if job.terminal:
        return
    try:
        await job_ops.cancel(state, job.id, owner)
    except ServiceError:  # it ended meanwhile, or the store is away: it runs to its end
        return


def _check_succeeded(job: Job, wait: float, headers: dict[str, str]) -> None:
    """OpenAIError unless the job succeeded; none invites a retry, which would queue it again."""
    where = f"GET /v1/jobs/{job.id}"
    fail_headers = headers | NO_RETRY
    if not job.terminal:
        raise OpenAIError(
            504,
            f"job {job.id} did not finish within {wait:g} s (the server's DIFFQ_MAX_WAIT_SECONDS); it goes "
            f"on: {where} (with Prefer: wait=N) returns it and its images",
            code="job_timeout",
            job_id=job.id,
            headers=fail_headers,
        )
    if job.status == Status.SUCCEEDED:
        return
    if job.status == Status.CANCELLED:
        raise OpenAIError(
            409, f"job {job.id} was cancelled", code="job_cancelled", job_id=job.id, headers=fail_headers
        )
    if job.status == Status.EXPIRED:
        raise OpenAIError(
            504,
            f"job {job.id} expired before it finished",
            code="job_expired",
            job_id=job.id,
            headers=fail_headers,
        )
    error = job.error
    raise OpenAIError(
        500,
        f"job {job.id} failed: {error.message if error else 'no reason recorded'}",
        code=error.type if error else "job_failed",
        job_id=job.id,
        headers=fail_headers,
    )


async def _images(state: State, job: Job) -> list[bytes]:
    """The succeeded job's PNGs, in one round trip."""
    pngs = []
    for i, png in enumerate(await state.store.get_images_async(job.id, job.image_count)):
        if png is None:  # past the result TTL already: only a wait far longer than it could do this
            raise OpenAIError(
                500, f"image {i} of job {job.id} has expired", code="image_expired", job_id=job.id
            )
        pngs.append(png)
    return pngs


def _size(size: str | None, manifest: Manifest) -> tuple[int, int]:
    """(width, height) from ``WxH``, one the model serves; its native size for ``auto`` or none."""
    served = manifest.served_sizes
    if size is None or size == "auto":
        return served[0]
    listed = ", ".join(f"{w}x{h}" for w, h in served)
    match = SIZE_PATTERN.fullmatch(size)
    if match is None:
        raise invalid("size", f"{size!r} is not WxH in pixels (such as {listed.split(',')[0]}) or auto")
    width, height = int(match[1]), int(match[2])
    if (width, height) not in served:
        raise invalid("size", f"{size} is not served by {manifest.name}; sizes: {listed}, auto")
    return width, height


def _json(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)
