"""Resolve a JobCreate against the served models: defaults filled, model limits checked.

The result is a ``JobRequest``: later code never re-validates. The condition must fit the
model's kind (``class_label`` for class-conditional models, ``prompt`` for text-to-image ones)
and the size must be one the model serves; the size is always filled in (the native size when
the request names none).
"""

from __future__ import annotations

from diffq.errors import ValidationFailed
from diffq.jobs import JobRequest, Priority, new_seed
from model_store.manifest import Manifest
from service.schemas import JobCreate


def _field_error(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details=[{"field": field, "message": message}])


def _check_condition(body: JobCreate, manifest: Manifest) -> None:
    """The condition fields the model's kind takes, and only those."""
    name = manifest.name
    if manifest.kind == "text-to-image":
        if body.class_label is not None:
            raise _field_error("class_label", f"{name} is a text-to-image model; send prompt instead")
        if body.prompt is None:
            raise _field_error("prompt", f"required by the text-to-image model {name} (may be empty)")
        return
    if body.prompt is not None:
        raise _field_error("prompt", f"{name} is a class-conditional model; send class_label instead")
    if body.negative_prompt is not None:
        raise _field_error("negative_prompt", f"{name} is a class-conditional model; it takes no prompts")
    if body.class_label is not None and body.class_label >= len(manifest.classes):
        raise _field_error("class_label", f"must be null or 0..{len(manifest.classes) - 1} for {name}")


def _resolve_size(body: JobCreate, manifest: Manifest) -> tuple[int, int]:
    """(width, height): both given and served, or the native size when both are absent."""
    if body.width is None and body.height is None:
        return manifest.served_sizes[0]
    if body.width is None or body.height is None:
        given, missing = ("width", "height") if body.height is None else ("height", "width")
        raise _field_error(missing, f"required with {given} (send both or neither)")
    served = manifest.served_sizes
    if (body.width, body.height) not in served:
        listed = ", ".join(f"{w}x{h}" for w, h in served)
        message = f"{body.width}x{body.height} is not served by {manifest.name}; sizes (WxH): {listed}"
        allowed = [{"width": w, "height": h} for w, h in served]
        raise ValidationFailed(
            f"width, height: {message}",
            details=[{"field": f, "message": message, "allowed": allowed} for f in ("width", "height")],
        )
    return body.width, body.height


def resolve(body: JobCreate, models: dict[str, Manifest], default_model: str) -> JobRequest:
    """The request with every default filled; ``ValidationFailed`` naming the first bad field."""
    name = body.model or default_model
    manifest = models.get(name)
    if manifest is None:
        raise _field_error("model", f"unknown model {name!r}; served: {sorted(models)}")
    s = manifest.sampling
    _check_condition(body, manifest)
    width, height = _resolve_size(body, manifest)
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
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
    )
