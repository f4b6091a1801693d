"""DDIM with eta = 0 (Song et al. 2021): deterministic, few steps.

Matches diffusers' ``DDIMScheduler`` with ``clip_sample`` as the schedule says,
``set_alpha_to_one=True`` and ``timestep_spacing="trailing"``, including its choice of the
previous timestep as ``t - T // n``.
"""

from __future__ import annotations

import numpy as np

from sampling.ddpm import trailing_timesteps
from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    n_train = schedule.num_train_timesteps
    ts = trailing_timesteps(n_train, num_steps)
    ac = schedule.alphas_cumprod.astype(np.float64)
    prev = ts - n_train // num_steps
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
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
        clip_x0=schedule.config.clip_sample,
        init_scale=1.0,
    )
