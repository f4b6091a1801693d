"""The samplers by name, and a cache of their plans (plans are read-only, so sharing is safe)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from sampling import ddim, ddpm, dpmpp_2m, euler_ancestral
from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule, ScheduleConfig

PlanFn = Callable[[NoiseSchedule, int], StepPlan]

SAMPLERS: dict[str, PlanFn] = {
    "ddpm": ddpm.plan,
    "ddim": ddim.plan,
    "dpmpp_2m": dpmpp_2m.plan,
    "euler_ancestral": euler_ancestral.plan,
}


@lru_cache(maxsize=256)
def get_plan(config: ScheduleConfig, sampler: str, num_steps: int) -> StepPlan:
    """The plan for ``sampler`` at ``num_steps`` under the schedule a model was trained with."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if not 1 <= num_steps <= config.num_train_timesteps:
        raise ValueError(f"num_steps must be in 1..{config.num_train_timesteps}, got {num_steps}")
    return SAMPLERS[sampler](_schedule(config), num_steps)


@lru_cache(maxsize=8)
def _schedule(config: ScheduleConfig) -> NoiseSchedule:
    return NoiseSchedule.from_config(config)
