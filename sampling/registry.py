"""The samplers by name, and a cache of their plans (plans are read-only, so sharing is safe)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from sampling import ddim, ddpm, dpmpp_2m, euler, euler_ancestral, flow_euler
from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule, ScheduleConfig

PlanFn = Callable[[NoiseSchedule, int], StepPlan]
CheckFn = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Sampler:
    """One sampler: its plan, the diffusers scheduler it follows, and whether it samples
    rectified-flow models (else variance-preserving ones)."""

    name: str
    plan: PlanFn
    check: CheckFn  # raises UnsupportedSchedule for a from_config view it cannot follow
    scheduler: str  # the diffusers class whose from_config view it follows
    legacy: Mapping[str, Any]  # its fixed settings for models trained here
    flow: bool = False


_ALL = [
    Sampler("ddpm", ddpm.plan, ddpm.check, ddpm.SCHEDULER, ddpm.LEGACY),
    Sampler("ddim", ddim.plan, ddim.check, ddim.SCHEDULER, ddim.LEGACY),
    Sampler("dpmpp_2m", dpmpp_2m.plan, dpmpp_2m.check, dpmpp_2m.SCHEDULER, dpmpp_2m.LEGACY),
    Sampler("euler", euler.plan, euler.check, euler.SCHEDULER, euler.LEGACY),
    Sampler(
        "euler_ancestral",
        euler_ancestral.plan,
        euler_ancestral.check,
        euler_ancestral.SCHEDULER,
        euler_ancestral.LEGACY,
    ),
    Sampler(
        "flow_euler", flow_euler.plan, flow_euler.check, flow_euler.SCHEDULER, flow_euler.LEGACY, flow=True
    ),
]
SAMPLER_INFO: dict[str, Sampler] = {s.name: s for s in _ALL}
SAMPLERS: dict[str, PlanFn] = {s.name: s.plan for s in _ALL}


def samplers_for(config: ScheduleConfig) -> list[str]:
    """The samplers that can sample a model with this schedule: the flow samplers for a
    rectified-flow model, the variance-preserving ones otherwise."""
    return [s.name for s in _ALL if s.flow == config.is_flow]


@lru_cache(maxsize=256)
def get_plan(config: ScheduleConfig, sampler: str, num_steps: int) -> StepPlan:
    """The plan for ``sampler`` at ``num_steps`` under the schedule a model was trained with."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if sampler not in samplers_for(config):
        kind = "rectified-flow" if config.is_flow else "variance-preserving"
        raise ValueError(
            f"sampler {sampler!r} cannot sample a {kind} model; use one of {samplers_for(config)}"
        )
    if not 1 <= num_steps <= config.num_train_timesteps:
        raise ValueError(f"num_steps must be in 1..{config.num_train_timesteps}, got {num_steps}")
    plan = SAMPLERS[sampler](_schedule(config), num_steps)
    for name in ("alpha", "sigma", "c_x", "c_x0", "c_x0_prev", "c_eps", "c_noise"):
        if not np.all(np.isfinite(getattr(plan, name))):
            # e.g. flow matching's shift_terminal at 1 step divides 0 by 0 (in diffusers too).
            raise ValueError(
                f"{sampler} cannot plan {num_steps} steps under this schedule ({name} is not finite)"
            )
    return plan


@lru_cache(maxsize=8)
def _schedule(config: ScheduleConfig) -> NoiseSchedule:
    return NoiseSchedule.from_config(config)
