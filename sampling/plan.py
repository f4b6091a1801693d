"""The shape every sampler shares, and the batched update that applies it.

Each sampler (one file each) turns a noise schedule and a step count into a ``StepPlan``: the
model timestep and the coefficients of one linear update per step, in variance-preserving
space (the space the model sees, so no per-sampler input scaling)::

    x0   = prediction of the clean image from the model output, clipped if the plan says so
    x'   = c_x * x + c_x0 * x0 + c_x0_prev * x0_prev + c_eps * eps + c_noise * z

DDPM, DDIM, DPM-Solver++ 2M, Euler, Euler ancestral and flow-matching Euler all fit this form
(a flow model's state x = (1 - s) x0 + s eps is "alpha = 1 - s, sigma = s"). A plan is read-only and
shared; everything that changes during sampling lives in the caller's per-row state, so one
batched call can mix rows of different samplers, step counts and positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sampling.schedule import PredictionType


@dataclass(frozen=True, eq=False)
class StepPlan:
    """Coefficients for every step of one sampler at one step count (arrays of length n)."""

    sampler: str
    timesteps: np.ndarray  # model timestep per step (float; fractional for some samplers)
    alpha: np.ndarray  # sqrt(alpha_bar) at each step's timestep (1 - s for flow)
    sigma: np.ndarray  # sqrt(1 - alpha_bar) at each step's timestep (s for flow)
    c_x: np.ndarray
    c_x0: np.ndarray
    c_x0_prev: np.ndarray
    c_eps: np.ndarray
    c_noise: np.ndarray
    clip_x0: bool
    init_scale: float  # initial latent = init_scale * N(0, I)

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        for name in ("alpha", "sigma", "c_x", "c_x0", "c_x0_prev", "c_eps", "c_noise"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"{self.sampler}: {name} has shape {arr.shape}, expected ({n},)")
            arr.setflags(write=False)
        self.timesteps.setflags(write=False)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def needs_noise(self, step: int) -> bool:
        """Whether this step draws fresh noise (so a row draws from its generator only then)."""
        return bool(self.c_noise[step] != 0.0)


@dataclass(frozen=True)
class StepCoefficients:
    """Per-row coefficients gathered for one batched update, each of shape [B]."""

    alpha: np.ndarray
    sigma: np.ndarray
    c_x: np.ndarray
    c_x0: np.ndarray
    c_x0_prev: np.ndarray
    c_eps: np.ndarray
    c_noise: np.ndarray
    clip_x0: np.ndarray  # bool

    @classmethod
    def gather(cls, plans: list[StepPlan], steps: list[int]) -> StepCoefficients:
        """Collect each row's coefficients at that row's own step."""

        def col(name: str) -> np.ndarray:
            return np.array([getattr(p, name)[i] for p, i in zip(plans, steps, strict=True)], np.float64)

        return cls(
            alpha=col("alpha"),
            sigma=col("sigma"),
            c_x=col("c_x"),
            c_x0=col("c_x0"),
            c_x0_prev=col("c_x0_prev"),
            c_eps=col("c_eps"),
            c_noise=col("c_noise"),
            clip_x0=np.array([p.clip_x0 for p in plans], dtype=bool),
        )


def split_prediction(
    x: np.ndarray,
    model_output: np.ndarray,
    alpha: np.ndarray,
    sigma: np.ndarray,
    prediction_type: PredictionType,
) -> tuple[np.ndarray, np.ndarray]:
    """(x0, eps) from the model output; alpha and sigma broadcast per row.

    x = alpha * x0 + sigma * eps throughout; for "flow" (rectified flow, velocity
    v = eps - x0) alpha = 1 - s and sigma = s.
    """
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x - sigma * eps) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x - sigma * model_output
        eps = alpha * model_output + sigma * x
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x - alpha * x0) / sigma
    elif prediction_type == "flow":
        x0 = x - sigma * model_output
        eps = x + alpha * model_output
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def apply_update(
    x: np.ndarray,
    model_output: np.ndarray,
    x0_prev: np.ndarray,
    noise: np.ndarray,
    coefs: StepCoefficients,
    prediction_type: PredictionType,
) -> tuple[np.ndarray, np.ndarray]:
    """One step for a batch of rows, each with its own coefficients.

    ``x``, ``model_output``, ``x0_prev`` and ``noise`` are [B, ...]; rows with no previous
    prediction or no noise at this step pass zeros there (their coefficient is zero).
    Returns (x_next as float32, x0 as float64 for the row's next step).
    """
    shape = (-1,) + (1,) * (x.ndim - 1)

    def per_row(a: np.ndarray) -> np.ndarray:
        return a.reshape(shape)

    x64 = x.astype(np.float64)
    x0, eps = split_prediction(
        x64, model_output.astype(np.float64), per_row(coefs.alpha), per_row(coefs.sigma), prediction_type
    )
    if coefs.clip_x0.any():
        x0 = np.where(per_row(coefs.clip_x0), np.clip(x0, -1.0, 1.0), x0)
    x_next = per_row(coefs.c_x) * x64 + per_row(coefs.c_x0) * x0
    # The other terms in order, each left out where every row's coefficient is zero: adding
    # a zero product changes no value (at most the sign of a zero), and skipping it saves two
    # passes over the batch (DPM-Solver++ has no eps or noise term, DDIM no previous x0).
    for c, term in ((coefs.c_x0_prev, x0_prev), (coefs.c_eps, eps), (coefs.c_noise, noise)):
        if c.any():
            x_next += per_row(c) * term
    return x_next.astype(np.float32), x0
