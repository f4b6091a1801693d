"""The pipeline's scheduler config as the manifest's schedule and sampling defaults."""

from __future__ import annotations

from typing import Any

from model_store.manifest import SamplingSpec, ScheduleSpec
from sampling.diffusers_config import UnsupportedSchedule, max_steps, samplers_for, schedule_from_diffusers
from tooling.importer.errors import ImportRefused

PREFERRED_SAMPLER = "dpmpp_2m"


def schedule_spec(scheduler_config: dict[str, Any]) -> ScheduleSpec:
    """The manifest's schedule, keeping the raw config; refused naming ``scheduler.<field>``."""
    try:
        return ScheduleSpec.from_config(schedule_from_diffusers(scheduler_config))
    except UnsupportedSchedule as e:
        raise ImportRefused(f"scheduler.{e.field}", str(e)) from e


def sampling_spec(
    schedule: ScheduleSpec,
    *,
    default_steps: int,
    default_sampler: str | None,
    guidance_scale: float,
    max_guidance_scale: float,
) -> SamplingSpec:
    """Samplers valid for the schedule, and request defaults within what every one can plan."""
    config = schedule.to_config()
    samplers = samplers_for(config)
    sampler = default_sampler or (PREFERRED_SAMPLER if PREFERRED_SAMPLER in samplers else samplers[0])
    if sampler not in samplers:
        raise ImportRefused(
            "default_sampler", f"{sampler!r} cannot sample this schedule; choose from {samplers}"
        )
    try:
        most = max_steps(config)
    except UnsupportedSchedule as e:
        raise ImportRefused(f"scheduler.{e.field}", str(e)) from e
    if not 1 <= default_steps <= most:
        raise ImportRefused("default_steps", f"{default_steps} is outside 1..{most} for this schedule")
    return SamplingSpec(
        samplers=samplers,
        default_sampler=sampler,
        default_steps=default_steps,
        min_steps=1,
        max_steps=most,
        default_guidance_scale=guidance_scale,
        max_guidance_scale=max(max_guidance_scale, guidance_scale),
    )
