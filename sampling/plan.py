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

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sampling.schedule import PredictionType

COEFFICIENTS = ("alpha", "sigma", "c_x", "c_x0", "c_x0_prev", "c_eps", "c_noise")


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
    table: np.ndarray = field(init=False, repr=False)  # [n, 8]: COEFFICIENTS and clip_x0
    num_steps: int = field(init=False)  # read for every row at every step: kept, not counted

    def __post_init__(self) -> None:
        n = len(self.timesteps)
        for name in COEFFICIENTS:
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"{self.sampler}: {name} has shape {arr.shape}, expected ({n},)")
            arr.setflags(write=False)
        self.timesteps.setflags(write=False)
        # One row per step, one column per coefficient (and the clip flag, as 0 or 1), so a
        # batch gathers every row's coefficients with one fancy index (StepCoefficients.gather).
        table = np.stack([np.asarray(getattr(self, c), np.float64) for c in COEFFICIENTS], axis=1)
        table = np.concatenate([table, np.full((n, 1), float(self.clip_x0))], axis=1)
        table.setflags(write=False)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "num_steps", n)

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
    def gather(cls, plans: Sequence[StepPlan], steps: Sequence[int]) -> StepCoefficients:
        """Collect each row's coefficients at that row's own step: the distinct plans' tables
        end to end, and one fancy index into them (rows share a few plans, so the loop over
        rows is a dictionary lookup each)."""
        offsets: dict[int, int] = {}
        tables: list[np.ndarray] = []
        index = np.empty(len(plans), dtype=np.intp)
        end = 0
        for i, (plan, step) in enumerate(zip(plans, steps, strict=True)):
            start = offsets.get(id(plan))
            if start is None:
                start = offsets[id(plan)] = end
                tables.append(plan.table)
                end += plan.num_steps
            if not 0 <= step < plan.num_steps:
                raise IndexError(f"{plan.sampler}: step {step} of {plan.num_steps}")
            index[i] = start + step
        table = (tables[0] if len(tables) == 1 else np.concatenate(tables))[index]
        k = len(COEFFICIENTS)
        columns = dict(zip(COEFFICIENTS, table.T[:k], strict=True))
        return cls(**columns, clip_x0=table[:, k] != 0.0)


def predict_x0(
    x: np.ndarray,
    model_output: np.ndarray,
    alpha: np.ndarray,
    sigma: np.ndarray,
    prediction_type: PredictionType,
) -> np.ndarray:
    """x0 from the model output; alpha and sigma broadcast per row.

    x = alpha * x0 + sigma * eps throughout; for "flow" (rectified flow, velocity
    v = eps - x0) alpha = 1 - s and sigma = s. Each product is computed once and the rest
    in place: the same values as the plain expression, with one allocation fewer.
    """
    if prediction_type == "epsilon":
        x0 = sigma * model_output
        np.subtract(x, x0, out=x0)
        x0 /= alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x
        x0 -= sigma * model_output
    elif prediction_type == "sample":
        x0 = model_output
    elif prediction_type == "flow":
        x0 = sigma * model_output
        np.subtract(x, x0, out=x0)
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0


def predict_eps(
    x: np.ndarray,
    model_output: np.ndarray,
    alpha: np.ndarray,
    sigma: np.ndarray,
    prediction_type: PredictionType,
) -> np.ndarray:
    """eps from the model output, as ``predict_x0`` (only samplers with an eps term need it)."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        eps = alpha * model_output
        eps += sigma * x
        return eps
    if prediction_type == "sample":
        eps = alpha * model_output
        np.subtract(x, eps, out=eps)
        eps /= sigma
        return eps
    if prediction_type == "flow":
        eps = alpha * model_output
        eps += x
        return eps
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def apply_update(
    x: np.ndarray,
    model_output: np.ndarray,
    x0_prev: np.ndarray | None,
    noise: np.ndarray | None,
    coefs: StepCoefficients,
    prediction_type: PredictionType,
) -> tuple[np.ndarray, np.ndarray]:
    """One step for a batch of rows, each with its own coefficients.

    ``x``, ``model_output``, ``x0_prev`` and ``noise`` are [B, ...]; rows with no previous
    prediction or no noise at this step pass zeros there (their coefficient is zero), and
    ``x0_prev`` or ``noise`` may be None where every row's coefficient for it is zero.
    Returns (x_next as float32, x0 as float64 for the row's next step).
    """
    shape = (-1,) + (1,) * (x.ndim - 1)

    def per_row(a: np.ndarray) -> np.ndarray:
        return a.reshape(shape)

    x64 = x.astype(np.float64)
    out64 = model_output.astype(np.float64, copy=False)
    alpha, sigma = per_row(coefs.alpha), per_row(coefs.sigma)
    x0 = predict_x0(x64, out64, alpha, sigma, prediction_type)
    if coefs.clip_x0.any():
        x0 = np.where(per_row(coefs.clip_x0), np.clip(x0, -1.0, 1.0), x0)
    x_next = per_row(coefs.c_x) * x64
    x_next += per_row(coefs.c_x0) * x0
    # The other terms in order, each left out where every row's coefficient is zero: adding
    # a zero product changes no value (at most the sign of a zero), and skipping it saves two
    # passes over the batch (DPM-Solver++ has no eps or noise term, DDIM no previous x0).
    if coefs.c_x0_prev.any():
        if x0_prev is None:
            raise ValueError("a row's step uses the previous x0, and none was given")
        x_next += per_row(coefs.c_x0_prev) * x0_prev
    if coefs.c_eps.any():
        x_next += per_row(coefs.c_eps) * predict_eps(x64, out64, alpha, sigma, prediction_type)
    if coefs.c_noise.any():
        if noise is None:
            raise ValueError("a row's step draws noise, and none was given")
        x_next += per_row(coefs.c_noise) * noise
    return x_next.astype(np.float32), x0
