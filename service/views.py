"""The v1 API's views of jobs and models: records and manifests turned into response bodies."""

from __future__ import annotations

from datetime import UTC, datetime

from diffq.eta import Estimate
from diffq.jobs import Job, image_seed
from model_store.manifest import Manifest
from service.schemas import MAX_PROMPT_CHARS, JobView, ModelView, SizeView


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def image_url(job_id: str, index: int, base: str = "") -> str:
    """Image ``index`` of a job: its route, prefixed with ``base`` (DIFFQ_PUBLIC_BASE_URL)."""
    return f"{base}/v1/jobs/{job_id}/images/{index}"


def job_view(job: Job, position: int | None, base: str = "", estimate: Estimate | None = None) -> JobView:
    """The API's view of a job record; image URLs are prefixed with ``base``; ``estimate``:
    when a queued or running job should start and finish."""
    req = job.request
    images = [
        {"url": image_url(job.id, i, base), "seed": image_seed(req.seed, i)} for i in range(job.image_count)
    ]
    return JobView.model_validate(
        {
            "id": job.id,
            "status": job.status.value,
            "request": req.to_dict(),
            "progress": {"step": job.step, "total": req.steps},
            "queue_position": position,
            "cancel_requested": job.cancel_requested,
            "timings": {
                "created_at": _iso(job.created_at),
                "started_at": _iso(job.started_at),
                "finished_at": _iso(job.finished_at),
                "deadline_at": _iso(job.deadline_at),
                "queue_ms": _ms(job.queue_seconds),
                "run_ms": _ms(job.run_seconds),
                "total_ms": _ms(job.total_seconds),
                "estimated_start_at": _iso(estimate.start_at) if estimate else None,
                "estimated_finish_at": _iso(estimate.finish_at) if estimate else None,
            },
            "images": images,
            "error": {"type": job.error.type, "message": job.error.message} if job.error else None,
            "webhook": job.webhook,
            "webhook_events": list(job.webhook_events) if job.webhook else None,
        }
    )


def model_view(m: Manifest) -> ModelView:
    """What a client needs to build a valid request for ``m``."""
    s = m.sampling
    text = m.kind == "text-to-image"
    return ModelView(
        name=m.name,
        version=m.version,
        kind=m.kind,
        classes=m.classes,
        sizes=[SizeView(width=w, height=h) for w, h in m.served_sizes],
        max_prompt_length=MAX_PROMPT_CHARS if text else None,
        max_prompt_tokens=m.tokenizer.model_max_length if text and m.tokenizer is not None else None,
        samplers=s.samplers,
        default_sampler=s.default_sampler,
        min_steps=s.min_steps,
        max_steps=s.max_steps,
        default_steps=s.default_steps,
        default_guidance_scale=s.default_guidance_scale,
        max_guidance_scale=s.max_guidance_scale,
        image=m.image.model_dump(),
        prediction_type=m.schedule.prediction_type,
    )
