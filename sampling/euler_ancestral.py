"""Euler ancestral (Karras et al. 2022 / k-diffusion): a stochastic first-order sampler.

Matches diffusers' ``EulerAncestralDiscreteScheduler``: as a pipeline's scheduler config
configures it (spacing, ``steps_offset``), or for models trained here with
``timestep_spacing="linspace"``, so the model sees fractional timesteps. diffusers works in
sigma space (x = x0 + sigma * eps); here the same update is written in variance-preserving
space, x_vp = x_sigma / sqrt(sigma^2 + 1), which is exactly the model input diffusers feeds
after ``scale_model_input``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule, training_sigmas
from sampling.scheduler_view import check_common_vp, sampler_view
from sampling.spacing import check_in_range, euler_init_sigma, fractional_timesteps

SCHEDULER = "EulerAncestralDiscreteScheduler"
LEGACY: dict[str, Any] = {"timestep_spacing": "linspace"}


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    check_common_vp(view, SCHEDULER)


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = schedule.num_train_timesteps
    ts = fractional_timesteps(view["timestep_spacing"], n_train, num_steps, view["steps_offset"])
    check_in_range("euler_ancestral", ts, n_train)
    full_sigmas = training_sigmas(schedule.alphas_cumprod, view["rescale_betas_zero_snr"])
    sig = np.append(np.interp(ts, np.arange(n_train), full_sigmas), 0.0)
    s_from, s_to = sig[:-1], sig[1:]
    s_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    s_down = np.sqrt(s_to**2 - s_up**2)
    scale_from = np.sqrt(s_from**2 + 1.0)  # x_sigma = x_vp * scale
    scale_to = np.sqrt(s_to**2 + 1.0)
    ratio = s_down / s_from
    init_sigma = euler_init_sigma(sig, view["timestep_spacing"])  # diffusers: x_sigma = N(0, I) * it
    return StepPlan(
        sampler="euler_ancestral",
        timesteps=ts.astype(np.float32),
        alpha=1.0 / scale_from,
        sigma=s_from / scale_from,
        c_x=scale_from * ratio / scale_to,
        c_x0=(1.0 - ratio) / scale_to,
        c_x0_prev=np.zeros(num_steps),
        c_eps=np.zeros(num_steps),
        c_noise=s_up / scale_to,
        clip_x0=False,
        init_scale=float(init_sigma / scale_from[0]),
    )
