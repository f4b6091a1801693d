"""DPM-Solver++ 2M (Lu et al. 2022): second-order multistep, the few-step default.

Matches diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``:
as a pipeline's scheduler config configures it (``solver_order`` 1 or 2, ``solver_type``
midpoint or heun, spacing, ``steps_offset``, ``final_sigmas_type``, ``lower_order_final``,
``euler_at_final``), or for models trained here with ``solver_order=2``,
``solver_type="midpoint"``, ``final_sigmas_type="zero"`` and ``timestep_spacing="trailing"``.
Second order uses the previous step's x0 prediction; diffusers falls back to first order on
the first step and, under its own rules, on the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule, training_sigmas
from sampling.scheduler_view import INF, UnsupportedSchedule, check_common_vp, require, sampler_view
from sampling.spacing import check_in_range, multistep_timesteps

SCHEDULER = "DPMSolverMultistepScheduler"
LEGACY: dict[str, Any] = {"timestep_spacing": "trailing"}

# diffusers' __init__ maps these settings of other solvers (DEIS, UniPC) onto its own.
ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
SOLVER_TYPE_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}
# diffusers' "lower_order_final" applies below this many steps only.
LOWER_ORDER_FINAL_BELOW = 15


def _settings(view: Mapping[str, Any]) -> tuple[str, str]:
    algorithm = ALGORITHM_ALIASES.get(view["algorithm_type"], view["algorithm_type"])
    solver_type = SOLVER_TYPE_ALIASES.get(view["solver_type"], view["solver_type"])
    return algorithm, solver_type


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    check_common_vp(view, SCHEDULER)
    algorithm, solver_type = _settings(view)
    if view["algorithm_type"] != "dpmsolver++" and view["final_sigmas_type"] == "zero":
        # diffusers checks the name before mapping it: it refuses "deis" with a zero final sigma.
        raise UnsupportedSchedule(
            "algorithm_type",
            view["algorithm_type"],
            "diffusers refuses it with final_sigmas_type 'zero' (set 'sigma_min')",
            SCHEDULER,
        )
    if algorithm != "dpmsolver++":
        raise UnsupportedSchedule(
            "algorithm_type",
            view["algorithm_type"],
            "only dpmsolver++ (deterministic, data prediction)",
            SCHEDULER,
        )
    if solver_type not in ("midpoint", "heun"):
        raise UnsupportedSchedule("solver_type", view["solver_type"], "supported: midpoint, heun", SCHEDULER)
    require(view, "solver_order", (1, 2), SCHEDULER, "supported: 1, 2")
    require(view, "final_sigmas_type", ("zero", "sigma_min"), SCHEDULER, "supported: zero, sigma_min")
    require(view, "lower_order_final", (False, True), SCHEDULER, "must be a boolean")
    require(view, "euler_at_final", (False, True), SCHEDULER, "must be a boolean")
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"):
        require(view, key, (False,), SCHEDULER, "only the schedule's own sigmas are supported")
    require(view, "use_flow_sigmas", (False,), SCHEDULER, "flow sigmas are not supported by this sampler")
    require(view, "use_dynamic_shifting", (False,), SCHEDULER, "dynamic shifting is not supported")
    # diffusers reads only "learned"/"learned_range" here (it then keeps channels :3 of the
    # output); DDPM's fixed variance types share the key and mean nothing to DPM-Solver.
    if view["variance_type"] in ("learned", "learned_range"):
        raise UnsupportedSchedule(
            "variance_type", view["variance_type"], "learned variances are not supported", SCHEDULER
        )
    if view["lambda_min_clipped"] != -INF:
        raise UnsupportedSchedule("lambda_min_clipped", view["lambda_min_clipped"], "only -inf", SCHEDULER)


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = schedule.num_train_timesteps
    ts = multistep_timesteps(view["timestep_spacing"], n_train, num_steps, view["steps_offset"])
    check_in_range("dpmpp_2m", ts, n_train)
    full_sigmas = training_sigmas(schedule.alphas_cumprod, view["rescale_betas_zero_snr"])
    sigma_last = full_sigmas[0] if view["final_sigmas_type"] == "sigma_min" else 0.0
    # Karras-style sigmas at the chosen timesteps, then the final sigma after the last step.
    sig = np.append(np.interp(ts, np.arange(len(full_sigmas)), full_sigmas), sigma_last)
    alpha_t = 1.0 / np.sqrt(sig**2 + 1.0)
    sigma_t = sig * alpha_t
    with np.errstate(divide="ignore"):
        lam = np.log(alpha_t) - np.log(sigma_t)  # +inf at a final sigma = 0

    n = len(ts)
    _, solver_type = _settings(view)
    last_first_order = (
        view["euler_at_final"]
        or (view["lower_order_final"] and n < LOWER_ORDER_FINAL_BELOW)
        or view["final_sigmas_type"] == "zero"
    )
    c_x = np.zeros(n)
    c_x0 = np.zeros(n)
    c_x0_prev = np.zeros(n)
    # A last step from sigma_min to sigma_min (final_sigmas_type="sigma_min" ending at t = 0)
    # has h = 0: r0 is infinite and the midpoint step leaves x unchanged, as in diffusers.
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            h = lam[i + 1] - lam[i]
            phi = np.expm1(-h)  # exp(-h) - 1, exactly -1 when h is infinite
            c_x[i] = sigma_t[i + 1] / sigma_t[i]
            if view["solver_order"] == 1 or i == 0 or (i == n - 1 and last_first_order):
                c_x0[i] = -alpha_t[i + 1] * phi
            elif solver_type == "midpoint":
                # D1 = (m0 - m1) / r0; x' = c_x x - a phi D0 - 0.5 a phi D1
                r0 = (lam[i] - lam[i - 1]) / h
                c_x0[i] = -alpha_t[i + 1] * phi * (1.0 + 0.5 / r0)
                c_x0_prev[i] = alpha_t[i + 1] * phi * 0.5 / r0
            else:  # heun: x' = c_x x - a phi D0 + a (phi / h + 1) D1
                r0 = (lam[i] - lam[i - 1]) / h
                k = alpha_t[i + 1] * (phi / h + 1.0) / r0
                c_x0[i] = -alpha_t[i + 1] * phi + k
                c_x0_prev[i] = -k
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
