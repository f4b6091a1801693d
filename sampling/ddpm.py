"""DDPM ancestral sampling (Ho et al. 2020), the 1000-step reference.

Matches diffusers' ``DDPMScheduler``: as a pipeline's scheduler config configures it (spacing,
``steps_offset``, ``clip_sample``, ``variance_type`` fixed_small / fixed_small_log /
fixed_large), or for models trained here with ``variance_type="fixed_small"``, ``clip_sample``
as the schedule says, and ``timestep_spacing="trailing"`` (at 1000 steps every timestep 999..0
is visited).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule
from sampling.scheduler_view import UnsupportedSchedule, check_common_vp, require, sampler_view
from sampling.spacing import check_in_range, integer_timesteps

SCHEDULER = "DDPMScheduler"
LEGACY: dict[str, Any] = {"timestep_spacing": "trailing", "variance_type": "fixed_small"}


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    check_common_vp(view, SCHEDULER)
    require(
        view,
        "variance_type",
        ("fixed_small", "fixed_small_log", "fixed_large"),
        SCHEDULER,
        "supported: fixed_small, fixed_small_log, fixed_large (learned variances need the model's "
        "variance output; fixed_large_log makes diffusers take the root of a negative number)",
    )
    require(view, "clip_sample", (False, True), SCHEDULER, "must be a boolean")
    if view["clip_sample"] and view["clip_sample_range"] != 1.0:
        raise UnsupportedSchedule(
            "clip_sample_range", view["clip_sample_range"], "only 1.0 is supported", SCHEDULER
        )


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = schedule.num_train_timesteps
    ts = integer_timesteps(view["timestep_spacing"], n_train, num_steps, view["steps_offset"])
    check_in_range("ddpm", ts, n_train)
    ac = schedule.alphas_cumprod.astype(np.float64)
    # diffusers steps to the next timestep in its list (-1, alpha_bar = 1, after the last).
    prev = np.append(ts[1:], -1)
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
    cur_alpha = a_t / a_prev
    cur_beta = 1.0 - cur_alpha
    if view["variance_type"] == "fixed_large":
        variance = cur_beta
    else:  # fixed_small; fixed_small_log is exp(0.5 * log(var)), the same standard deviation
        variance = np.maximum((1.0 - a_prev) / (1.0 - a_t) * cur_beta, 1e-20)
    zeros = np.zeros(len(ts))
    return StepPlan(
        sampler="ddpm",
        timesteps=ts.astype(np.float32),
        alpha=np.sqrt(a_t),
        sigma=np.sqrt(1.0 - a_t),
        c_x=np.sqrt(cur_alpha) * (1.0 - a_prev) / (1.0 - a_t),
        c_x0=np.sqrt(a_prev) * cur_beta / (1.0 - a_t),
        c_x0_prev=zeros,
        c_eps=zeros.copy(),
        # diffusers draws noise at every t > 0, however small its variance (1e-20 floor).
        c_noise=np.where(ts > 0, np.sqrt(variance), 0.0),
        clip_x0=bool(view["clip_sample"]),
        init_scale=1.0,
    )
