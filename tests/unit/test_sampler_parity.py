"""Our samplers against diffusers' schedulers as an oracle (test-only dependency).

Same schedule, same timesteps, same dummy model and the same injected noise: the latents
must agree to float tolerance after every step. diffusers' stochastic schedulers draw noise
from a torch generator; we draw the identical tensor from a clone of that generator and hand
it to our update, so the comparison is exact up to float32 arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from sampling.plan import StepCoefficients, apply_update
from sampling.registry import get_plan
from sampling.schedule import NoiseSchedule, PredictionType, ScheduleConfig
from tooling.tiny_pipelines import SD15_SCHEDULER

CONFIG = ScheduleConfig(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
SHAPE = (2, 1, 6, 6)


ALPHAS_CUMPROD = NoiseSchedule.from_config(CONFIG).alphas_cumprod.astype(np.float64)


def dummy_model(x: np.ndarray, t: float, prediction_type: str) -> np.ndarray:
    """A well-behaved stand-in for a denoiser: its clean-image guess is bounded and depends on
    the sample and the timestep; it returns the noise or velocity that guess implies."""
    a = np.interp(t, np.arange(len(ALPHAS_CUMPROD)), ALPHAS_CUMPROD)
    alpha, sigma = np.sqrt(a), np.sqrt(1.0 - a)
    x0_guess = np.tanh(0.8 * x + 0.3 * np.sin(t / 97.0))
    eps = (x - alpha * x0_guess) / sigma
    out = eps if prediction_type == "epsilon" else alpha * eps - sigma * x0_guess
    return out.astype(np.float32)


def oracle(sampler: str, prediction_type: str, clip: bool) -> Any:
    common = dict(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )
    if sampler == "ddpm":
        return DDPMScheduler(
            **common, variance_type="fixed_small", clip_sample=clip, timestep_spacing="trailing"
        )
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=clip, set_alpha_to_one=True, timestep_spacing="trailing")
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            final_sigmas_type="zero",
            timestep_spacing="trailing",
        )
    return EulerAncestralDiscreteScheduler(**common, timestep_spacing="linspace")


CASES = [
    ("ddpm", 1000),
    ("ddpm", 50),
    ("ddpm", 7),
    ("ddim", 1),
    ("ddim", 8),
    ("ddim", 7),
    ("ddim", 50),
    ("dpmpp_2m", 1),
    ("dpmpp_2m", 2),
    ("dpmpp_2m", 4),
    ("dpmpp_2m", 8),
    ("dpmpp_2m", 13),
    ("dpmpp_2m", 20),
    ("euler_ancestral", 1),
    ("euler_ancestral", 10),
    ("euler_ancestral", 30),
]


# Epsilon prediction at t = 999 recovers x0 by dividing by alpha ~ 5e-5 under this schedule;
# Euler's first step there amplifies float32 rounding of the model output past the tolerance
# (one reason the reference model predicts v). Everything else is checked for both types.
EPSILON_CASES = [c for c in CASES if c[0] != "euler_ancestral" or c[1] == 1]


# x0 clipping (diffusers' clip_sample) applies to DDPM and DDIM only.
CLIP_CASES = [c for c in CASES if c[0] in ("ddpm", "ddim")]


@pytest.mark.parametrize(
    ("prediction_type", "clip", "sampler", "steps"),
    [("v_prediction", False, *c) for c in CASES]
    + [("epsilon", False, *c) for c in EPSILON_CASES]
    + [(p, True, *c) for c in CLIP_CASES for p in ("v_prediction", "epsilon")],
)
def test_matches_diffusers_at_every_step(
    prediction_type: PredictionType, clip: bool, sampler: str, steps: int
) -> None:
    config = ScheduleConfig(
        beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=clip
    )
    sched = oracle(sampler, prediction_type, clip)
    sched.set_timesteps(steps)
    plan = get_plan(config, sampler, steps)
    np.testing.assert_allclose(plan.timesteps, sched.timesteps.numpy().astype(np.float32), rtol=1e-6)

    # The oracle runs in float64: in float32, Euler's sigma-space latents (|x| ~ 2e4 at t = 999)
    # lose more precision than the comparison tolerates.
    if hasattr(sched, "sigmas"):
        sched.sigmas = sched.sigmas.double()
    gen = torch.Generator().manual_seed(1234)
    latents_t = torch.randn(SHAPE, generator=gen, dtype=torch.float64) * sched.init_noise_sigma
    # Our rows live in variance-preserving space: the model input diffusers computes.
    ours = sched.scale_model_input(latents_t, sched.timesteps[0]).numpy().astype(np.float32)
    x0_prev = np.zeros(SHAPE)
    for i, t in enumerate(sched.timesteps):
        model_in = sched.scale_model_input(latents_t, t)
        np.testing.assert_allclose(ours, model_in.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"step {i}")
        # Resynchronise so float32 rounding cannot accumulate over a thousand stochastic steps.
        ours = model_in.numpy()
        out_t = torch.from_numpy(dummy_model(model_in.numpy(), float(t), prediction_type).astype(np.float64))
        # Capture the noise diffusers will draw at this step, from a clone of its generator.
        noise_gen = torch.Generator().set_state(gen.get_state())
        noise = torch.randn(SHAPE, generator=noise_gen, dtype=torch.float64).numpy()
        latents_t = sched.step(out_t, t, latents_t, generator=gen).prev_sample

        out_ours = dummy_model(ours, float(plan.timesteps[i]), prediction_type)
        coefs = StepCoefficients.gather([plan] * SHAPE[0], [i] * SHAPE[0])
        use_noise = noise if plan.needs_noise(i) else np.zeros(SHAPE)
        ours, x0_prev = apply_update(ours, out_ours, x0_prev, use_noise, coefs, config.prediction_type)

    # Past the last step diffusers' latents are the clean sample (sigma = 0): no scaling.
    np.testing.assert_allclose(ours, latents_t.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler_ancestral"])
def test_plans_cover_one_to_thousand_steps(sampler: str) -> None:
    for steps in (1, 2, 3, 999, 1000):
        plan = get_plan(CONFIG, sampler, steps)
        assert plan.num_steps == steps
        assert np.all(np.diff(plan.timesteps) < 0), "timesteps must decrease"
        for name in ("c_x", "c_x0", "c_x0_prev", "c_eps", "c_noise"):
            assert np.all(np.isfinite(getattr(plan, name))), f"{sampler}@{steps}: {name}"


def test_rejects_unknown_sampler_and_bad_steps() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        get_plan(CONFIG, "heun", 10)
    with pytest.raises(ValueError, match="num_steps"):
        get_plan(CONFIG, "ddim", 0)
    with pytest.raises(ValueError, match="num_steps"):
        get_plan(CONFIG, "ddim", 1001)


# --- Imported pipelines: each sampler against diffusers' scheduler built from the pipeline's own
# scheduler config with ``from_config``, exactly as a user would swap schedulers.

SD15_PNDM = SD15_SCHEDULER  # SD 1.5's own scheduler config
SD2_V_DDIM = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "timestep_spacing": "leading",
}
# A linspace config naming DPM-Solver with its non-default settings: heun, sigma_min, no lower
# order final; without clip_sample, DDPM and DDIM get their default (clip on).
LINSPACE_DPM = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "solver_type": "heun",
    "final_sigmas_type": "sigma_min",
    "lower_order_final": False,
    "lambda_min_clipped": float("-inf"),
}
# DiT-style DDIM config (leading spacing by DDIM's default, no offset, final alpha 1).
DIT_DDIM = {
    "_class_name": "DDIMScheduler",
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": True,
    "steps_offset": 0,
}
# Zero terminal SNR (Lin et al. 2023): v-prediction, trailing spacing, DDPM's large variance.
ZERO_SNR = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "final_sigmas_type": "sigma_min",
    "variance_type": "fixed_large",
}

VP_CONFIGS = {
    "sd15-pndm": SD15_PNDM,
    "sd2-v-ddim-leading": SD2_V_DDIM,
    "sd2-v-ddim-trailing": {**SD2_V_DDIM, "timestep_spacing": "trailing"},
    "linspace-dpm": LINSPACE_DPM,
    "dit-ddim": DIT_DDIM,
    "zero-snr": ZERO_SNR,
}
FLOW_CONFIGS = {
    "sd3-shift3": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    },
    "shift1-terminal": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": 0.02,
    },
    "stochastic": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "stochastic_sampling": True,
    },
}
IMPORTED_STEPS = (1, 4, 8, 25, "max")


def general_model(x: np.ndarray, t: float, config: ScheduleConfig) -> np.ndarray:
    """``dummy_model`` for any schedule: a bounded clean-image guess, returned as the schedule's
    prediction type says (noise, velocity, clean sample, or a flow model's velocity)."""
    if config.prediction_type == "flow":
        s = t / config.num_train_timesteps
        alpha, sigma = 1.0 - s, s
    else:
        ac = NoiseSchedule.from_config(config).alphas_cumprod.astype(np.float64)
        a = np.interp(t, np.arange(len(ac)), ac)
        alpha, sigma = np.sqrt(a), np.sqrt(1.0 - a)
    x0_guess = np.tanh(0.8 * x + 0.3 * np.sin(t / 97.0))
    eps = (x - alpha * x0_guess) / sigma
    out = {
        "epsilon": eps,
        "v_prediction": alpha * eps - sigma * x0_guess,
        "sample": x0_guess,
        "flow": eps - x0_guess,
    }[config.prediction_type]
    return np.asarray(out, dtype=np.float32)


def run_against_oracle(
    config: ScheduleConfig,
    raw: dict[str, Any],
    sampler: str,
    steps: int,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> None:
    import diffusers

    from sampling.registry import SAMPLER_INFO

    sched = getattr(diffusers, SAMPLER_INFO[sampler].scheduler).from_config(raw)
    sched.set_timesteps(steps)
    plan = get_plan(config, sampler, steps)
    np.testing.assert_allclose(plan.timesteps, sched.timesteps.numpy().astype(np.float32), rtol=1e-6)

    if hasattr(sched, "sigmas"):
        sched.sigmas = sched.sigmas.double()
    scale_in = getattr(sched, "scale_model_input", lambda x, t: x)
    gen = torch.Generator().manual_seed(1234)
    noise0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    latents_t = noise0 * getattr(sched, "init_noise_sigma", 1.0)
    ours = scale_in(latents_t, sched.timesteps[0]).numpy().astype(np.float32)
    # The seed contract: our initial state is the same noise times plan.init_scale.
    np.testing.assert_allclose(ours, noise0.numpy() * plan.init_scale, rtol=1e-5, atol=1e-6)
    x0_prev = np.zeros(SHAPE)
    for i, t in enumerate(sched.timesteps):
        model_in = scale_in(latents_t, t)
        np.testing.assert_allclose(ours, model_in.numpy(), rtol=rtol, atol=atol, err_msg=f"step {i}")
        ours = model_in.numpy()
        out_t = torch.from_numpy(general_model(model_in.numpy(), float(t), config).astype(np.float64))
        noise_gen = torch.Generator().set_state(gen.get_state())
        # Flow matching draws its noise in float32 (it casts the sample first): the same draw.
        noise_dtype = torch.float32 if config.is_flow else torch.float64
        noise = torch.randn(SHAPE, generator=noise_gen, dtype=noise_dtype).numpy().astype(np.float64)
        latents_t = sched.step(out_t, t, latents_t, generator=gen).prev_sample

        out_ours = general_model(ours, float(plan.timesteps[i]), config)
        coefs = StepCoefficients.gather([plan] * SHAPE[0], [i] * SHAPE[0])
        use_noise = noise if plan.needs_noise(i) else np.zeros(SHAPE)
        ours, x0_prev = apply_update(ours, out_ours, x0_prev, use_noise, coefs, config.prediction_type)
    np.testing.assert_allclose(ours, latents_t.numpy(), rtol=rtol, atol=atol)


def _imported_cases(configs: dict[str, Any], samplers: list[str]) -> list[Any]:
    return [
        pytest.param(name, sampler, steps, id=f"{name}-{sampler}-{steps}")
        for name in configs
        for sampler in samplers
        for steps in IMPORTED_STEPS
    ]


VP_SAMPLERS = ["ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral"]


@pytest.mark.parametrize(("name", "sampler", "steps"), _imported_cases(VP_CONFIGS, VP_SAMPLERS))
def test_imported_vp_matches_diffusers_from_config(name: str, sampler: str, steps: int | str) -> None:
    from sampling.diffusers_config import max_steps, schedule_from_diffusers

    raw = VP_CONFIGS[name]
    config = schedule_from_diffusers(raw)
    n = max_steps(config) if steps == "max" else int(steps)
    if name == "zero-snr" and sampler.startswith("euler"):
        # diffusers' Euler steps cast the sample to float32; at zero SNR the first sigma is 4096,
        # so x_sigma + dt * d cancels down to O(1) with up to ~4096 * 2**-24 = 2.4e-4 of error.
        run_against_oracle(config, raw, sampler, n, atol=1e-4)
    else:
        run_against_oracle(config, raw, sampler, n)


@pytest.mark.parametrize(("name", "sampler", "steps"), _imported_cases(FLOW_CONFIGS, ["flow_euler"]))
def test_imported_flow_matches_diffusers_from_config(name: str, sampler: str, steps: int | str) -> None:
    from sampling.diffusers_config import max_steps, schedule_from_diffusers

    raw = FLOW_CONFIGS[name]
    config = schedule_from_diffusers(raw)
    n = max_steps(config) if steps == "max" else int(steps)
    if raw.get("shift_terminal") and n == 1:
        # One step stretches 1 - sigma = 0 by 0 / 0: NaN in diffusers, refused here.
        sched = FlowMatchEulerDiscreteScheduler.from_config(raw)
        with np.errstate(invalid="ignore"):
            sched.set_timesteps(1)
        assert torch.isnan(sched.sigmas[0])
        with pytest.raises(ValueError, match="cannot plan 1 steps"):
            get_plan(config, sampler, 1)
        return
    run_against_oracle(config, raw, sampler, n)
