"""Euler (Karras et al. 2022, deterministic: no churn): a first-order ODE sampler.

Matches diffusers' ``EulerDiscreteScheduler`` stepped with its default ``s_churn=0``: as a
pipeline's scheduler config configures it (spacing, ``steps_offset``, ``final_sigmas_type``),
or for models trained here with ``timestep_spacing="linspace"`` (fractional timesteps).
diffusers works in sigma space; in variance-preserving space (the model input after
``scale_model_input``) the step x_sigma' = x0 + sigma' / sigma * (x_sigma - x0) is linear in
x and x0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule, training_sigmas
from sampling.scheduler_view import check_common_vp, require, sampler_view
from sampling.spacing import check_in_range, euler_init_sigma, fractional_timesteps

SCHEDULER = "EulerDiscreteScheduler"
LEGACY: dict[str, Any] = {"timestep_spacing": "linspace"}


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    check_common_vp(view, SCHEDULER)
    require(view, "interpolation_type", ("linear",), SCHEDULER, "only linear interpolation of sigmas")
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        require(view, key, (False,), SCHEDULER, "only the schedule's own sigmas are supported")
    require(
        view,
        "timestep_type",
        ("discrete",),
        SCHEDULER,
        "only discrete timesteps (continuous feeds log sigma)",
    )
    require(view, "final_sigmas_type", ("zero", "sigma_min"), SCHEDULER, "supported: zero, sigma_min")


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = schedule.num_train_timesteps
    ts = fractional_timesteps(view["timestep_spacing"], n_train, num_steps, view["steps_offset"])
    check_in_range("euler", ts, n_train)
    full_sigmas = training_sigmas(schedule.alphas_cumprod, view["rescale_betas_zero_snr"])
    sigma_last = full_sigmas[0] if view["final_sigmas_type"] == "sigma_min" else 0.0
    sig = np.append(np.interp(ts, np.arange(n_train), full_sigmas), sigma_last)
    s_from, s_to = sig[:-1], sig[1:]
    scale_from = np.sqrt(s_from**2 + 1.0)  # x_sigma = x_vp * scale
    scale_to = np.sqrt(s_to**2 + 1.0)
    # The last step's result is what diffusers hands the VAE: its sigma-space latents, unscaled
    # (which differs from the VP form only when the final sigma is sigma_min, not zero).
    scale_to[-1] = 1.0
    ratio = s_to / s_from
    init_sigma = euler_init_sigma(sig, view["timestep_spacing"])  # diffusers: x_sigma = N(0, I) * it
    return StepPlan(
        sampler="euler",
        timesteps=ts.astype(np.float32),
        alpha=1.0 / scale_from,
        sigma=s_from / scale_from,
        c_x=scale_from * ratio / scale_to,
        c_x0=(1.0 - ratio) / scale_to,
        c_x0_prev=np.zeros(num_steps),
        c_eps=np.zeros(num_steps),
        c_noise=np.zeros(num_steps),
        clip_x0=False,
        init_scale=float(init_sigma / scale_from[0]),
    )
