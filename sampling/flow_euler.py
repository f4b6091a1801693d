"""Euler for rectified flow (flow matching; Liu et al. 2022, Esser et al. 2024).

Matches diffusers' ``FlowMatchEulerDiscreteScheduler`` with its ``shift`` (and
``shift_terminal``, ``stochastic_sampling``) as a pipeline's scheduler config sets them. The
state is x_s = (1 - s) x0 + s eps for s from 1 (noise) to 0, the model is fed the timestep
s * num_train_timesteps and predicts the velocity v = eps - x0 (prediction type "flow"), and the
step x' = x + (s' - s) v is the plan's linear form with x0 = x - s v and eps = x + (1 - s) v:
x' = (1 - s') x0 + s' eps. With stochastic sampling the fresh noise takes eps's place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sampling.plan import StepPlan
from sampling.schedule import NoiseSchedule
from sampling.scheduler_view import UnsupportedSchedule, require, sampler_view

SCHEDULER = "FlowMatchEulerDiscreteScheduler"
LEGACY: dict[str, Any] = {}


def check(view: Mapping[str, Any]) -> None:
    """Refuse what this sampler cannot follow (UnsupportedSchedule names the field)."""
    n = view["num_train_timesteps"]
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 100_000:
        raise UnsupportedSchedule("num_train_timesteps", n, "must be an integer in 2..100000", SCHEDULER)
    shift = view["shift"]
    if not isinstance(shift, int | float) or isinstance(shift, bool) or not shift > 0:
        raise UnsupportedSchedule("shift", shift, "must be a positive number", SCHEDULER)
    require(
        view,
        "use_dynamic_shifting",
        (False,),
        SCHEDULER,
        "the shift would depend on the image size at request time; set a fixed shift",
    )
    require(view, "invert_sigmas", (False,), SCHEDULER, "inverted sigmas are not supported")
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        require(view, key, (False,), SCHEDULER, "only the shifted linear sigmas are supported")
    require(view, "stochastic_sampling", (False, True), SCHEDULER, "must be a boolean")
    terminal = view["shift_terminal"]
    if terminal is not None and (
        not isinstance(terminal, int | float) or isinstance(terminal, bool) or not 0 <= terminal < 1
    ):
        raise UnsupportedSchedule("shift_terminal", terminal, "must be null or a number in [0, 1)", SCHEDULER)


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigmas_for(view: Mapping[str, Any], num_steps: int) -> np.ndarray:
    """diffusers' n + 1 sigmas (float32, ending at 0), including its quirk: the range is taken
    from the already shifted training sigmas and then shifted again."""
    n_train = view["num_train_timesteps"]
    shift = float(view["shift"])
    train = _shifted(np.linspace(1, n_train, n_train, dtype=np.float32)[::-1] / np.float32(n_train), shift)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    timesteps = np.linspace(sigma_max * n_train, sigma_min * n_train, num_steps)
    sigmas = _shifted(timesteps / n_train, shift)
    if view["shift_terminal"]:
        one_minus = 1.0 - sigmas
        # At 1 step the only sigma is 1: 0 / 0 (NaN in diffusers too; get_plan refuses it).
        with np.errstate(divide="ignore", invalid="ignore"):
            sigmas = 1.0 - one_minus / (one_minus[-1] / (1.0 - view["shift_terminal"]))
    return np.append(sigmas.astype(np.float32), np.float32(0.0))


def plan(schedule: NoiseSchedule, num_steps: int) -> StepPlan:
    view = sampler_view(schedule.config, SCHEDULER, LEGACY)
    n_train = view["num_train_timesteps"]
    sig32 = sigmas_for(view, num_steps)
    if len(sig32) > 2 and not np.all(np.diff(sig32[:-1]) < 0):
        raise ValueError(f"flow_euler: {num_steps} steps repeat a timestep under this shift")
    sig = sig32.astype(np.float64)
    s, s_next = sig[:-1], sig[1:]
    stochastic = bool(view["stochastic_sampling"])
    zeros = np.zeros(num_steps)
    return StepPlan(
        sampler="flow_euler",
        # diffusers feeds the float32 product sigma * num_train_timesteps.
        timesteps=(sig32[:-1] * np.float32(n_train)).astype(np.float32),
        alpha=1.0 - s,
        sigma=s,
        c_x=zeros,
        c_x0=1.0 - s_next,
        c_x0_prev=zeros.copy(),
        c_eps=zeros.copy() if stochastic else s_next,
        c_noise=s_next if stochastic else zeros.copy(),
        clip_x0=False,
        # x at s = 1 is pure noise (diffusers' init_noise_sigma is 1 and its first sigma 1).
        init_scale=1.0,
    )
