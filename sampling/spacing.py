"""Timestep spacings ("linspace", "leading", "trailing"; Lin et al. 2023, Table 2) as diffusers'
schedulers compute them. The families differ in small ways (integer or fractional timesteps,
n or n + 1 points), so each has its own function; all return timesteps in decreasing order.
"""

from __future__ import annotations

import numpy as np


def trailing_timesteps(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """Integer timesteps spaced evenly from the last one down ("trailing" spacing)."""
    return np.round(_trailing(num_train_timesteps, num_steps)).astype(np.int64) - 1


def _trailing(num_train_timesteps: int, num_steps: int) -> np.ndarray:
    """T - k * T / n for k < n: what diffusers' ``np.arange(T, 0, -T / n)`` means. That
    arange has one point too many for 62 of the step counts up to 1000 (61, 103, 121, ...:
    float rounding), the last at timestep -1; its first n points are these, to the bit."""
    start = float(num_train_timesteps)
    delta = (start - num_train_timesteps / num_steps) - start  # arange's own step, rounded as it rounds
    return start + np.arange(num_steps) * delta


def integer_timesteps(
    spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int
) -> np.ndarray:
    """DDPM's and DDIM's integer timesteps (``steps_offset`` shifts "leading" only)."""
    n_train = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, num_steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = n_train // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return trailing_timesteps(n_train, num_steps)
    raise ValueError(f"unknown timestep_spacing {spacing!r}")


def multistep_timesteps(
    spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int
) -> np.ndarray:
    """DPM-Solver's integer timesteps: n + 1 points with the last (t = 0 side) dropped."""
    last = num_train_timesteps  # diffusers' lambda_min_clipped = -inf clips nothing
    if spacing == "linspace":
        return np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (num_steps + 1)
        ts = (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return ts + steps_offset
    if spacing == "trailing":
        return trailing_timesteps(num_train_timesteps, num_steps)
    raise ValueError(f"unknown timestep_spacing {spacing!r}")


def fractional_timesteps(
    spacing: str, num_train_timesteps: int, num_steps: int, steps_offset: int
) -> np.ndarray:
    """The Euler family's float timesteps: "linspace" is not rounded, so the model sees
    fractional timesteps there. float64 here where diffusers uses float32: the difference is
    below float32 resolution of the model input, and the plans of models trained here stay as
    they were."""
    n_train = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, num_steps, dtype=np.float64)[::-1].copy()
    if spacing == "leading":
        ratio = n_train // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return _trailing(n_train, num_steps).round().astype(np.float64) - 1.0
    raise ValueError(f"unknown timestep_spacing {spacing!r}")


def check_in_range(sampler: str, timesteps: np.ndarray, num_train_timesteps: int) -> None:
    """diffusers indexes its tables with these timesteps; past the end it fails (IndexError),
    and repeated timesteps make multistep samplers divide by zero. Refuse both up front."""
    if timesteps.max() > num_train_timesteps - 1 or timesteps.min() < 0:
        raise ValueError(
            f"{sampler}: {len(timesteps)} steps reach timestep {timesteps.max():g} outside "
            f"0..{num_train_timesteps - 1} with this schedule's spacing and steps_offset"
        )
    if len(timesteps) > 1 and not np.all(np.diff(timesteps) < 0):
        raise ValueError(f"{sampler}: {len(timesteps)} steps repeat a timestep with this schedule's spacing")


def euler_init_sigma(sigmas: np.ndarray, timestep_spacing: str) -> float:
    """diffusers' Euler schedulers' ``init_noise_sigma``: max(sigma) for linspace and trailing
    spacing, sqrt(max(sigma)^2 + 1) otherwise."""
    top = float(sigmas.max())
    return top if timestep_spacing in ("linspace", "trailing") else float(np.sqrt(top**2 + 1))
