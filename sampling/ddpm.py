"""DDPM ancestral sampling (Ho et al. 2020), the 1000-step reference.

Matches diffusers' ``DDPMScheduler`` with ``variance_type="fixed_small"``, ``clip_sample`` as
the schedule says, and ``timestep_spacing="trailing"`` (at 1000 steps every timestep 999..0 is
visited).
"""

from __future__ import annotations

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule


def trailing_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """Integer timesteps spaced evenly from the last one down ("trailing" spacing)."""
    ratio = num_train_timesteps / num_steps
    return np.round(np.arange(num_train_timesteps, 0, -ratio)).astype(np.int64) - 1


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    ts = trailing_timesteps(schedule.num_train_timesteps, num_steps)
    ac = schedule.alphas_cumprod.astype(np.float64)
    prev = np.append(ts[1:], -1)
    a_t = ac[ts]
    a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
    cur_alpha = a_t / a_prev
    cur_beta = 1.0 - cur_alpha
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
        c_noise=np.where(ts > 0, np.sqrt(variance), 0.0),
        clip_x0=schedule.config.clip_sample,
        init_scale=1.0,
    )
