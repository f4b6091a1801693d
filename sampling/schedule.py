"""Noise schedules: the beta sequence of the forward process and its cumulative products.

Pure numpy. The float32 arithmetic matches diffusers' schedulers so the two agree to float
tolerance (parity tests rely on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
# "flow": a rectified-flow model's velocity v = eps - x0 (see ``sampling.plan.predict_x0``).
PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]


@dataclass(frozen=True)
class ScheduleConfig:
    """How the model was trained; ships in the model manifest."""

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: PredictionType = "v_prediction"
    # Clip x0 predictions to [-1, 1] in DDPM and DDIM (diffusers' ``clip_sample``). Off by
    # default: with guidance the clipped x0 and the unclipped noise disagree, and DDIM at 16
    # steps drew the requested digit only 37% of the time with it on (100% off).
    clip_sample: bool = False
    # Rescale the betas to zero terminal SNR (diffusers' ``rescale_betas_zero_snr``).
    rescale_betas_zero_snr: bool = False
    # An imported pipeline's own scheduler config, frozen (sorted (key, value) pairs, lists as
    # tuples) so the config stays hashable. Each sampler reads it as its diffusers class's
    # ``from_config`` would (``sampling.scheduler_view``); None for models trained here, whose
    # samplers keep their fixed settings. Build it with ``sampling.diffusers_config``.
    scheduler_config: tuple[tuple[str, Any], ...] | None = None

    @property
    def is_flow(self) -> bool:
        """A rectified-flow model (x_t = (1 - s) x0 + s eps), sampled by the flow samplers only."""
        return self.prediction_type == "flow"


def make_betas(config: ScheduleConfig) -> np.ndarray:
    """Per-step betas as float32 [T]."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return np.linspace(config.beta_start, config.beta_end, n, dtype=np.float32)
    if config.beta_schedule == "scaled_linear":
        root = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32)
        return (root**2).astype(np.float32)
    if config.beta_schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return np.asarray(betas, dtype=np.float32)
    raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas whose last alpha_bar is zero (Lin et al. 2023, Algorithm 1), in float32 as diffusers."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas, dtype=np.float32))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1.0 - alphas).astype(np.float32)


@dataclass(frozen=True)
class NoiseSchedule:
    """Precomputed forward-process quantities, shared read-only by every sampler."""

    config: ScheduleConfig
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        betas = make_betas(config)
        if config.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
        betas.setflags(write=False)
        alphas_cumprod.setflags(write=False)
        return cls(config=config, betas=betas, alphas_cumprod=alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps


def training_sigmas(alphas_cumprod: np.ndarray, zero_snr: bool) -> np.ndarray:
    """sqrt((1 - a) / a) per training timestep, float64: the sigma-space schedule of the
    Euler and DPM-Solver samplers. With zero terminal SNR the last alpha_bar is 0, so diffusers
    puts it at 2**-24, "close to 0 without being 0 so first sigma is not inf"."""
    ac = alphas_cumprod.astype(np.float64)
    if zero_snr:
        ac[-1] = 2.0**-24
    return np.sqrt((1.0 - ac) / ac)
