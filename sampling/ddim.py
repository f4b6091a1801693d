"""DDIM with eta = 0 (Song et al. 2021): deterministic, few steps.

Matches diffusers' ``DDIMScheduler``, including its choice of the previous timestep as
``t - T // n`` whatever the spacing: as a pipeline's scheduler config configures it (spacing,
``steps_offset``, ``set_alpha_to_one``, ``clip_sample``), or for models trained here with
``clip_sample`` as the schedule says, ``set_alpha_to_one=True`` and
``timestep_spacing="trailing"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule
from sampling.scheduler_view import UnsupportedSchedule, check_common_vp, require, sampler_view
from sampling.spacing import check_in_range, integer_timesteps

SCHEDULER = "DDIMScheduler"
LEGACY: dict[str, Any] = {"timestep_spacing": "trailing", "set_alpha_to_one": True}


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    check_common_vp(view, SCHEDULER)
    require(view, "set_alpha_to_one", (False, True), SCHEDULER, "must be a boolean")
    require(view, "clip_sample", (False, True), SCHEDULER, "must be a boolean")
    if view["clip_sample"] and view["clip_sample_range"] != 1.0:
        raise UnsupportedSchedule(
            "clip_sample_range", view["clip_sample_range"], "only 1.0 is supported", SCHEDULER
        )


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = schedule.num_train_timesteps
    ts = integer_timesteps(view["timestep_spacing"], n_train, num_steps, view["steps_offset"])
    check_in_range("ddim", ts, n_train)
    ac = schedule.alphas_cumprod.astype(np.float64)
    prev = ts - n_train // num_steps
    # Past t = 0 diffusers uses alpha_bar = 1, or alpha_bar[0] without set_alpha_to_one.
    final = 1.0 if view["set_alpha_to_one"] else float(ac[0])
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
    zeros = np.zeros(len(ts))
    return StepPlan(
        sampler="ddim",
        timesteps=ts.astype(np.float32),
        alpha=np.sqrt(a_t),
        sigma=np.sqrt(1.0 - a_t),
        c_x=zeros,
        c_x0=np.sqrt(a_prev),
        c_x0_prev=zeros.copy(),
        c_eps=np.sqrt(1.0 - a_prev),
        c_noise=zeros.copy(),
        clip_x0=bool(view["clip_sample"]),
        init_scale=1.0,
    )
