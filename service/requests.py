"""Resolve a JobCreate against the served models: defaults filled, model limits checked.

The result is a ``JobRequest``: later code never re-validates.
"""

from __future__ import annotations

from diffq.errors import ValidationFailed
from diffq.jobs import JobRequest, Priority, new_seed
from model_store.manifest import Manifest
from service.schemas import JobCreate


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details=[{"field": field, "message": message}])


def resolve(body: JobCreate, models: dict[str, Manifest], default_model: str) -> JobRequest:
    name = body.model or default_model
    manifest = models.get(name)
    if manifest is None:
        raise _field_error("model", f"unknown model {name!r}; served: {sorted(models)}")
    s = manifest.sampling
    if body.class_label is not None and body.class_label >= len(manifest.classes):
        raise _field_error("class_label", f"must be null or 0..{len(manifest.classes) - 1} for {name}")
    sampler = body.sampler or s.default_sampler
    if sampler not in s.samplers:
        raise _field_error("sampler", f"unknown sampler {sampler!r}; {name} offers {s.samplers}")
    steps = body.steps if body.steps is not None else s.default_steps
    if not s.min_steps <= steps <= s.max_steps:
        raise _field_error("steps", f"must be within {s.min_steps}..{s.max_steps} for {name}")
    guidance = float(body.guidance_scale) if body.guidance_scale is not None else s.default_guidance_scale
    if guidance > s.max_guidance_scale:
        raise _field_error("guidance_scale", f"must be within 0..{s.max_guidance_scale:g} for {name}")
    return JobRequest(
        model=name,
        class_label=body.class_label,
        num_images=body.num_images,
        steps=steps,
        sampler=sampler,
        guidance_scale=guidance,
        seed=body.seed if body.seed is not None else new_seed(),
        priority=Priority(body.priority),
        deadline_seconds=None if body.deadline_seconds is None else float(body.deadline_seconds),
    )
