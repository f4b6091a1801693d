"""DPM-Solver++ 2M (Lu et al. 2022): second-order multistep, the few-step default.

Matches diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``,
``solver_order=2``, ``solver_type="midpoint"``, ``final_sigmas_type="zero"`` and
``timestep_spacing="trailing"``: first order on the first and the last step, second order
between, using the previous step's x0 prediction.
"""

from __future__ import annotations

import numpy as np

from sampling.ddpm import trailing_timesteps
from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    ts = trailing_timesteps(schedule.num_train_timesteps, num_steps)
    ac = schedule.alphas_cumprod.astype(np.float64)
    full_sigmas = np.sqrt((1.0 - ac) / ac)
    # Karras-style sigmas at the chosen timesteps, then sigma = 0 after the last step.
    sig = np.append(np.interp(ts, np.arange(len(full_sigmas)), full_sigmas), 0.0)
    alpha_t = 1.0 / np.sqrt(sig**2 + 1.0)
    sigma_t = sig * alpha_t
    with np.errstate(divide="ignore"):
        lam = np.log(alpha_t) - np.log(sigma_t)  # +inf at the final sigma = 0

    n = len(ts)
    c_x = np.zeros(n)
    c_x0 = np.zeros(n)
    c_x0_prev = np.zeros(n)
    for i in range(n):
        h = lam[i + 1] - lam[i]
        phi = np.expm1(-h)  # exp(-h) - 1, exactly -1 when h is infinite
        c_x[i] = sigma_t[i + 1] / sigma_t[i]
        if i == 0 or i == n - 1:
            c_x0[i] = -alpha_t[i + 1] * phi
        else:
            r0 = (lam[i] - lam[i - 1]) / h
            c_x0[i] = -alpha_t[i + 1] * phi * (1.0 + 0.5 / r0)
            c_x0_prev[i] = alpha_t[i + 1] * phi * 0.5 / r0
    return StepPlan(
        sampler="dpmpp_2m",
        timesteps=ts.astype(np.float32),
        alpha=alpha_t[:-1],
        sigma=sigma_t[:-1],
        c_x=c_x,
        c_x0=c_x0,
        c_x0_prev=c_x0_prev,
        c_eps=np.zeros(n),
        c_noise=np.zeros(n),
        clip_x0=False,
        init_scale=1.0,
    )
