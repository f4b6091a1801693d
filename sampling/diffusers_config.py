"""A diffusers pipeline's scheduler config as our schedule: validated, and refused when a sampler
could not follow it exactly.

A request's ``sampler`` on an imported model behaves as diffusers' scheduler for that sampler
built with ``from_config(<the pipeline's scheduler config>)``, whatever class the config names
(SD 1.5 names PNDM, which no sampler here implements; its config still configures them all).
So the config is checked the way each sampler's scheduler class would read it
(``sampling.scheduler_view``), and any setting one of them cannot honour is refused here, at
import, with the field and value named, rather than sampled differently at request time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sampling.registry import SAMPLER_INFO, get_plan, samplers_for
from sampling.schedule import ScheduleConfig
from sampling.scheduler_view import UnsupportedSchedule, freeze, from_config_view, thaw

__all__ = [
    "UnsupportedSchedule",
    "max_steps",
    "min_steps",
    "raw_scheduler_config",
    "samplers_for",
    "schedule_from_diffusers",
]

# Scheduler classes of variance-preserving (DDPM-family) models: their configs describe the
# betas and prediction type the model was trained with, which is all our samplers need.
VP_SCHEDULERS = frozenset(
    {
        "DDPMScheduler",
        "DDIMScheduler",
        "PNDMScheduler",
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverSDEScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
        "LCMScheduler",
    }
)
# Rectified-flow (flow matching) schedulers: x_t = (1 - s) x0 + s eps, velocity prediction.
FLOW_SCHEDULERS = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})

# Fields of the schedule itself (what the model was trained with): every sampler's view must
# agree on them, since one model has one schedule.
_MODEL_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def schedule_from_diffusers(scheduler_config: Mapping[str, Any]) -> ScheduleConfig:
    """The ``ScheduleConfig`` for a pipeline's raw scheduler config (``scheduler_config.json``).

    Raises ``UnsupportedSchedule`` (a ValueError) naming the field and value of anything the
    samplers for this kind of model cannot honour exactly as diffusers would.
    """
    if not isinstance(scheduler_config, Mapping):
        raise UnsupportedSchedule(
            "scheduler_config", type(scheduler_config).__name__, "must be a JSON object"
        )
    raw = dict(scheduler_config)
    class_name = raw.get("_class_name")
    if class_name in FLOW_SCHEDULERS:
        flow = True
    elif class_name in VP_SCHEDULERS:
        flow = False
    else:
        known = sorted(VP_SCHEDULERS | FLOW_SCHEDULERS)
        raise UnsupportedSchedule(
            "_class_name", class_name, f"not a known scheduler; known: {', '.join(known)}"
        )
    try:
        frozen = freeze(raw)
        hash(frozen)
    except TypeError as e:
        raise UnsupportedSchedule("scheduler_config", "...", f"values must be JSON ({e})") from None

    views = {
        info.name: from_config_view(raw, info.scheduler)
        for info in SAMPLER_INFO.values()
        if info.flow == flow
    }
    for name, view in views.items():
        SAMPLER_INFO[name].check(view)
    if flow:
        n_train = views["flow_euler"]["num_train_timesteps"]
        return ScheduleConfig(num_train_timesteps=n_train, prediction_type="flow", scheduler_config=frozen)

    first = next(iter(views.values()))
    for name, view in views.items():
        for key in (*_MODEL_FIELDS, "rescale_betas_zero_snr"):
            if view[key] != first[key]:  # cannot happen with diffusers 0.42's shared defaults
                raise UnsupportedSchedule(key, view[key], f"samplers disagree ({name} reads it differently)")
    return ScheduleConfig(
        num_train_timesteps=first["num_train_timesteps"],
        beta_schedule=first["beta_schedule"],
        beta_start=float(first["beta_start"]),
        beta_end=float(first["beta_end"]),
        prediction_type=first["prediction_type"],
        # As DDPM and DDIM read it (their default is True); the other samplers never clip.
        clip_sample=bool(views["ddim"]["clip_sample"]),
        rescale_betas_zero_snr=bool(first["rescale_betas_zero_snr"]),
        scheduler_config=frozen,
    )


def raw_scheduler_config(config: ScheduleConfig) -> dict[str, Any] | None:
    """The pipeline's scheduler config a ``ScheduleConfig`` carries, as a JSON dict (or None)."""
    return None if config.scheduler_config is None else thaw(config.scheduler_config)


def max_steps(config: ScheduleConfig) -> int:
    """The largest step count every sampler for this schedule can plan.

    Below ``num_train_timesteps`` when the spacing would reach past the last timestep (e.g.
    "leading" with ``steps_offset=1`` at 1000 steps) or repeat one (DPM-Solver's "linspace" at
    1000 steps): diffusers fails or divides by zero there.
    """
    return _first_plannable(config, range(config.num_train_timesteps, 0, -1))


def min_steps(config: ScheduleConfig) -> int:
    """The smallest step count every sampler for this schedule can plan (1, except e.g. flow
    matching with ``shift_terminal``, whose single-step schedule is 0 / 0 in diffusers too)."""
    return _first_plannable(config, range(1, config.num_train_timesteps + 1))


def _first_plannable(config: ScheduleConfig, counts: range) -> int:
    names = samplers_for(config)
    for n in counts:
        try:
            for name in names:
                get_plan(config, name, n)
        except ValueError:
            continue
        return n
    raise UnsupportedSchedule(
        "num_train_timesteps", config.num_train_timesteps, "no step count can be planned"
    )
