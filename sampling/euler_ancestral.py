"""Euler ancestral (Karras et al. 2022 / k-diffusion): a stochastic first-order sampler.

Matches diffusers' ``EulerAncestralDiscreteScheduler`` with ``timestep_spacing="linspace"``,
so the model sees fractional timesteps. diffusers works in sigma space (x = x0 + sigma * eps);
here the same update is written in variance-preserving space, x_vp = x_sigma / sqrt(sigma^2 + 1),
which is exactly the model input diffusers feeds after ``scale_model_input``.
"""

from __future__ import annotations

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    n_train = schedule.num_train_timesteps
    ts = np.linspace(0, n_train - 1, num_steps, dtype=np.float64)[::-1].copy()
    ac = schedule.alphas_cumprod.astype(np.float64)
    full_sigmas = np.sqrt((1.0 - ac) / ac)
    sig = np.append(np.interp(ts, np.arange(n_train), full_sigmas), 0.0)
    s_from, s_to = sig[:-1], sig[1:]
    s_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    s_down = np.sqrt(s_to**2 - s_up**2)
    scale_from = np.sqrt(s_from**2 + 1.0)  # x_sigma = x_vp * scale
    scale_to = np.sqrt(s_to**2 + 1.0)
    ratio = s_down / s_from
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
        # diffusers draws x_sigma = N(0, I) * max(sigma) for linspace spacing.
        init_scale=float(sig.max() / scale_from[0]),
    )
