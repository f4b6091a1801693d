"""Pipelines' own scheduler configs: how each sampler reads them (as diffusers' ``from_config``
would), what is refused at import, and that models trained here sample exactly as before."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest

from model_store.manifest import ScheduleSpec
from model_store.store import ModelStore
from sampling.diffusers_config import (
    UnsupportedSchedule,
    max_steps,
    min_steps,
    raw_scheduler_config,
    samplers_for,
    schedule_from_diffusers,
)
from sampling.registry import SAMPLER_INFO, SAMPLERS, get_plan
from sampling.schedule import NoiseSchedule, PredictionType, ScheduleConfig
from sampling.scheduler_view import DEFAULTS, from_config_view
from tests.unit.test_sampler_parity import (
    DIT_DDIM,
    FLOW_CONFIGS,
    LINSPACE_DPM,
    SD2_V_DDIM,
    SD15_PNDM,
    VP_CONFIGS,
)

MNIST_MANIFEST = Path(__file__).parents[2] / "model_store" / "mnist-cfg-unet" / "1" / "manifest.json"
PLAN_ARRAYS = ("timesteps", "alpha", "sigma", "c_x", "c_x0", "c_x0_prev", "c_eps", "c_noise")


# --- The plans of models trained here, pinned to the formulas they had before imported
# pipelines existed (copied verbatim; fixed per-sampler settings, no scheduler config).


def _trailing(n_train: int, n: int) -> np.ndarray:
    return np.round(np.arange(n_train, 0, -n_train / n)).astype(np.int64) - 1


def _old_plan(sampler: str, s: NoiseSchedule, n: int) -> dict[str, Any]:
    n_train = s.num_train_timesteps
    ac = s.alphas_cumprod.astype(np.float64)
    zeros = np.zeros(n)
    if sampler in ("ddpm", "ddim"):
        ts = _trailing(n_train, n)
        prev = np.append(ts[1:], -1) if sampler == "ddpm" else ts - n_train // n
        a_t = ac[ts]
        a_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], 1.0)
        out = dict(timesteps=ts.astype(np.float32), alpha=np.sqrt(a_t), sigma=np.sqrt(1.0 - a_t))
        if sampler == "ddim":
            out |= dict(
                c_x=zeros, c_x0=np.sqrt(a_prev), c_x0_prev=zeros, c_eps=np.sqrt(1.0 - a_prev), c_noise=zeros
            )
        else:
            cur_alpha = a_t / a_prev
            cur_beta = 1.0 - cur_alpha
            variance = np.maximum((1.0 - a_prev) / (1.0 - a_t) * cur_beta, 1e-20)
            out |= dict(
                c_x=np.sqrt(cur_alpha) * (1.0 - a_prev) / (1.0 - a_t),
                c_x0=np.sqrt(a_prev) * cur_beta / (1.0 - a_t),
                c_x0_prev=zeros,
                c_eps=zeros,
                c_noise=np.where(ts > 0, np.sqrt(variance), 0.0),
            )
        return out | dict(clip_x0=s.config.clip_sample, init_scale=1.0)
    full_sigmas = np.sqrt((1.0 - ac) / ac)
    if sampler == "dpmpp_2m":
        ts = _trailing(n_train, n)
        sig = np.append(np.interp(ts, np.arange(len(full_sigmas)), full_sigmas), 0.0)
        alpha_t = 1.0 / np.sqrt(sig**2 + 1.0)
        sigma_t = sig * alpha_t
        with np.errstate(divide="ignore"):
            lam = np.log(alpha_t) - np.log(sigma_t)
        c_x, c_x0, c_x0_prev = np.zeros(n), np.zeros(n), np.zeros(n)
        for i in range(n):
            h = lam[i + 1] - lam[i]
            phi = np.expm1(-h)
            c_x[i] = sigma_t[i + 1] / sigma_t[i]
            if i == 0 or i == n - 1:
                c_x0[i] = -alpha_t[i + 1] * phi
            else:
                r0 = (lam[i] - lam[i - 1]) / h
                c_x0[i] = -alpha_t[i + 1] * phi * (1.0 + 0.5 / r0)
                c_x0_prev[i] = alpha_t[i + 1] * phi * 0.5 / r0
        return dict(
            timesteps=ts.astype(np.float32),
            alpha=alpha_t[:-1],
            sigma=sigma_t[:-1],
            c_x=c_x,
            c_x0=c_x0,
            c_x0_prev=c_x0_prev,
            c_eps=zeros,
            c_noise=zeros,
            clip_x0=False,
            init_scale=1.0,
        )
    assert sampler == "euler_ancestral"
    ts = np.linspace(0, n_train - 1, n, dtype=np.float64)[::-1].copy()
    sig = np.append(np.interp(ts, np.arange(n_train), full_sigmas), 0.0)
    s_from, s_to = sig[:-1], sig[1:]
    s_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
    s_down = np.sqrt(s_to**2 - s_up**2)
    scale_from, scale_to = np.sqrt(s_from**2 + 1.0), np.sqrt(s_to**2 + 1.0)
    ratio = s_down / s_from
    return dict(
        timesteps=ts.astype(np.float32),
        alpha=1.0 / scale_from,
        sigma=s_from / scale_from,
        c_x=scale_from * ratio / scale_to,
        c_x0=(1.0 - ratio) / scale_to,
        c_x0_prev=zeros,
        c_eps=zeros,
        c_noise=s_up / scale_to,
        clip_x0=False,
        init_scale=float(sig.max() / scale_from[0]),
    )


def _mnist_config() -> ScheduleConfig:
    spec = ScheduleSpec(**json.loads(MNIST_MANIFEST.read_text())["schedule"])
    assert spec.scheduler_config is None
    return spec.to_config()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler_ancestral"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_models_trained_here_keep_their_plans_bit_for_bit(
    sampler: str, clip: bool, prediction_type: PredictionType
) -> None:
    import dataclasses

    config = dataclasses.replace(_mnist_config(), clip_sample=clip, prediction_type=prediction_type)
    schedule = NoiseSchedule.from_config(config)
    for n in (1, 2, 3, 4, 7, 8, 13, 16, 20, 50, 999, 1000):
        new, old = get_plan(config, sampler, n), _old_plan(sampler, schedule, n)
        for name in PLAN_ARRAYS:
            got, want = getattr(new, name), old[name]
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), f"{sampler}@{n}: {name}"
        assert new.clip_x0 == (old["clip_x0"] and sampler in ("ddpm", "ddim"))
        assert new.init_scale == old["init_scale"]


def test_the_shipped_manifest_keeps_its_per_sampler_spacing() -> None:
    config = _mnist_config()
    assert config.scheduler_config is None
    assert get_plan(config, "ddim", 4).timesteps.tolist() == [999, 749, 499, 249]  # trailing
    assert get_plan(config, "ddpm", 4).timesteps.tolist() == [999, 749, 499, 249]
    assert get_plan(config, "dpmpp_2m", 4).timesteps.tolist() == [999, 749, 499, 249]
    assert get_plan(config, "euler_ancestral", 4).timesteps.tolist() == [999, 666, 333, 0]  # linspace
    assert samplers_for(config) == ["ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral"]


# --- How each sampler reads a pipeline's config.


@pytest.mark.parametrize("scheduler", sorted(DEFAULTS))
def test_defaults_are_diffusers_own(scheduler: str) -> None:
    params = inspect.signature(getattr(diffusers, scheduler).__init__).parameters
    theirs = {k: p.default for k, p in params.items() if k != "self"}
    assert set(theirs) == set(DEFAULTS[scheduler])
    for key, value in theirs.items():
        mine = DEFAULTS[scheduler][key]
        assert mine == value or (isinstance(value, float) and math.isnan(value) and math.isnan(mine)), key


WITH_USED_DEFAULTS = {**SD15_PNDM, "timestep_spacing": "leading", "_use_default_values": ["timestep_spacing"]}
VIEW_CONFIGS = [SD15_PNDM, SD2_V_DDIM, LINSPACE_DPM, DIT_DDIM, WITH_USED_DEFAULTS, *FLOW_CONFIGS.values()]


@pytest.mark.parametrize("raw", VIEW_CONFIGS, ids=lambda r: str(r.get("_class_name")))
@pytest.mark.parametrize("scheduler", sorted(DEFAULTS))
def test_views_are_what_from_config_builds(raw: dict[str, Any], scheduler: str) -> None:
    built = getattr(diffusers, scheduler).from_config(raw).config
    view = from_config_view(raw, scheduler)
    assert view == {k: built[k] for k in DEFAULTS[scheduler]}


def test_a_key_listed_as_a_default_takes_each_class_default() -> None:
    # Saved as "leading" only because PNDM's default was: DPM-Solver reads its own "linspace".
    assert (
        from_config_view(WITH_USED_DEFAULTS, "DPMSolverMultistepScheduler")["timestep_spacing"] == "linspace"
    )
    assert from_config_view(WITH_USED_DEFAULTS, "DDIMScheduler")["timestep_spacing"] == "leading"


def test_sd15_config_serves_every_vp_sampler_with_its_class_defaults() -> None:
    config = schedule_from_diffusers(SD15_PNDM)
    assert config.prediction_type == "epsilon" and config.beta_schedule == "scaled_linear"
    assert not config.is_flow and samplers_for(config) == [
        "ddpm",
        "ddim",
        "dpmpp_2m",
        "euler",
        "euler_ancestral",
    ]
    # DDIM: "leading" + steps_offset 1; DPM-Solver and Euler: their own default "linspace".
    assert get_plan(config, "ddim", 4).timesteps.tolist() == [751, 501, 251, 1]
    assert get_plan(config, "dpmpp_2m", 4).timesteps.tolist() == [999, 749, 500, 250]
    assert get_plan(config, "euler", 4).timesteps.tolist() == [999, 666, 333, 0]
    # set_alpha_to_one = false: DDIM's last step lands on alpha_bar[0], not 1.
    ac0 = float(NoiseSchedule.from_config(config).alphas_cumprod[0])
    assert get_plan(config, "ddim", 4).c_x0[-1] == pytest.approx(math.sqrt(ac0))
    # "leading" + offset 1 reaches timestep 1000 at 1000 steps: 999 is the most served.
    assert max_steps(config) == 999 and min_steps(config) == 1
    with pytest.raises(ValueError, match=r"outside 0\.\.999"):
        get_plan(config, "ddim", 1000)


def test_clip_sample_follows_each_class_default() -> None:
    # No clip_sample in the config: DDPM and DDIM default to clipping, the others never clip.
    config = schedule_from_diffusers(LINSPACE_DPM)
    assert config.clip_sample
    assert get_plan(config, "ddim", 8).clip_x0 and get_plan(config, "ddpm", 8).clip_x0
    assert not get_plan(config, "dpmpp_2m", 8).clip_x0
    assert not get_plan(schedule_from_diffusers(SD15_PNDM), "ddim", 8).clip_x0


def test_lower_order_final_applies_below_fifteen_steps_only() -> None:
    raw = {
        "_class_name": "DPMSolverMultistepScheduler",
        "final_sigmas_type": "sigma_min",
        "timestep_spacing": "trailing",
    }
    config = schedule_from_diffusers(raw)
    assert get_plan(config, "dpmpp_2m", 14).c_x0_prev[-1] == 0.0  # first order last step
    assert get_plan(config, "dpmpp_2m", 15).c_x0_prev[-1] != 0.0  # second order
    euler_last = schedule_from_diffusers({**raw, "euler_at_final": True})
    assert get_plan(euler_last, "dpmpp_2m", 15).c_x0_prev[-1] == 0.0
    first = schedule_from_diffusers({**raw, "solver_order": 1})
    assert not np.any(get_plan(first, "dpmpp_2m", 15).c_x0_prev)


def test_other_solvers_settings_map_as_diffusers_maps_them() -> None:
    # A DEIS or UniPC config names solver settings DPMSolverMultistepScheduler rewrites.
    deis = {"_class_name": "DEISMultistepScheduler", "algorithm_type": "deis", "solver_type": "logrho"}
    # ... but diffusers checks "deis" against a zero final sigma before rewriting it.
    with pytest.raises(ValueError, match="final_sigmas_type"):
        diffusers.DPMSolverMultistepScheduler.from_config(deis)
    with pytest.raises(UnsupportedSchedule, match="'algorithm_type'"):
        schedule_from_diffusers(deis)
    for raw in (
        {**deis, "final_sigmas_type": "sigma_min"},
        {"_class_name": "UniPCMultistepScheduler", "solver_type": "bh2"},
    ):
        built = diffusers.DPMSolverMultistepScheduler.from_config(raw)
        assert (built.config.algorithm_type, built.config.solver_type) == ("dpmsolver++", "midpoint")
        config = schedule_from_diffusers(raw)
        plain = schedule_from_diffusers({**raw, "algorithm_type": "dpmsolver++", "solver_type": "midpoint"})
        assert (
            get_plan(config, "dpmpp_2m", 10).c_x0_prev.tolist()
            == get_plan(plain, "dpmpp_2m", 10).c_x0_prev.tolist()
        )


def test_flow_models_get_the_flow_sampler_only() -> None:
    config = schedule_from_diffusers(FLOW_CONFIGS["sd3-shift3"])
    assert config.is_flow and config.prediction_type == "flow"
    assert samplers_for(config) == ["flow_euler"]
    with pytest.raises(ValueError, match="cannot sample a rectified-flow model"):
        get_plan(config, "ddim", 10)
    with pytest.raises(ValueError, match="cannot sample a variance-preserving model"):
        get_plan(schedule_from_diffusers(SD15_PNDM), "flow_euler", 10)
    plan = get_plan(config, "flow_euler", 4)
    assert plan.timesteps[0] == 1000.0 and plan.init_scale == 1.0
    # shift 3 keeps the schedule near the noise end longer than shift 1 would.
    unshifted = get_plan(
        schedule_from_diffusers({**FLOW_CONFIGS["sd3-shift3"], "shift": 1.0}), "flow_euler", 4
    )
    assert np.all(plan.sigma[1:] > unshifted.sigma[1:])
    assert min_steps(schedule_from_diffusers(FLOW_CONFIGS["shift1-terminal"])) == 2


def test_configs_are_hashable_plan_keys() -> None:
    a = schedule_from_diffusers(SD15_PNDM)
    b = schedule_from_diffusers(dict(reversed(list(SD15_PNDM.items()))))
    assert a == b and hash(a) == hash(b)
    assert get_plan(a, "ddim", 10) is get_plan(b, "ddim", 10)
    assert raw_scheduler_config(a) == SD15_PNDM
    with_list = schedule_from_diffusers({**SD15_PNDM, "_use_default_values": ["timestep_spacing"]})
    assert raw_scheduler_config(with_list)["_use_default_values"] == ["timestep_spacing"]  # type: ignore[index]


# --- Refused at import, naming the field.

PNDM = SD15_PNDM
DPM = {"_class_name": "DPMSolverMultistepScheduler"}
EULER = {"_class_name": "EulerDiscreteScheduler"}
FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler"}
REFUSED = [
    ({**PNDM, "_class_name": "EDMEulerScheduler"}, "_class_name"),
    ({k: v for k, v in PNDM.items() if k != "_class_name"}, "_class_name"),
    ({**PNDM, "beta_schedule": "sigmoid"}, "beta_schedule"),
    ({**PNDM, "trained_betas": [0.1] * 1000}, "trained_betas"),
    ({**PNDM, "prediction_type": "flow_prediction"}, "prediction_type"),
    ({**PNDM, "timestep_spacing": "karras"}, "timestep_spacing"),
    ({**PNDM, "steps_offset": -1}, "steps_offset"),
    ({**PNDM, "thresholding": True}, "thresholding"),
    ({**PNDM, "rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),  # with epsilon
    ({**PNDM, "clip_sample": True, "clip_sample_range": 2.0}, "clip_sample_range"),
    ({**PNDM, "variance_type": "learned_range"}, "variance_type"),
    ({**PNDM, "variance_type": "fixed_large_log"}, "variance_type"),
    ({**DPM, "algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ({**DPM, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, "algorithm_type"),
    ({**DPM, "solver_order": 3}, "solver_order"),
    ({**DPM, "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({**DPM, "use_lu_lambdas": True}, "use_lu_lambdas"),
    ({**DPM, "use_flow_sigmas": True}, "use_flow_sigmas"),
    ({**DPM, "lambda_min_clipped": -5.1}, "lambda_min_clipped"),
    ({**DPM, "final_sigmas_type": "denoise_to_zero"}, "final_sigmas_type"),
    ({**EULER, "interpolation_type": "log_linear"}, "interpolation_type"),
    ({**EULER, "timestep_type": "continuous"}, "timestep_type"),
    ({**EULER, "use_exponential_sigmas": True}, "use_exponential_sigmas"),
    ({**FLOW, "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({**FLOW, "invert_sigmas": True}, "invert_sigmas"),
    ({**FLOW, "shift": 0.0}, "shift"),
    ({**FLOW, "use_beta_sigmas": True}, "use_beta_sigmas"),
    ({**FLOW, "shift_terminal": 1.5}, "shift_terminal"),
]


@pytest.mark.parametrize(("raw", "field"), REFUSED, ids=[f for _, f in REFUSED])
def test_refuses_what_no_sampler_can_honour_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedSchedule, match=f"'{field}'") as err:
        schedule_from_diffusers(raw)
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_settings_a_class_does_not_read_are_not_refused() -> None:
    # Euler's options mean nothing to a flow model, and PNDM's skip_prk_steps to anyone.
    schedule_from_diffusers({**FLOW, "use_karras_sigmas": False, "interpolation_type": "log_linear"})
    schedule_from_diffusers({**PNDM, "skip_prk_steps": False})


# --- The manifest's form.


def test_manifest_spec_round_trips_the_raw_config() -> None:
    raw = {**LINSPACE_DPM, "prediction_type": "v_prediction"}
    config = schedule_from_diffusers(raw)
    spec = ScheduleSpec.from_config(config)
    text = spec.model_dump_json()
    assert "-Infinity" in text  # lambda_min_clipped survives JSON
    again = ScheduleSpec.model_validate_json(text)
    assert again.to_config() == config
    assert again.scheduler_config == raw


def test_manifest_spec_must_agree_with_its_scheduler_config() -> None:
    fields = ScheduleSpec.from_config(schedule_from_diffusers(SD15_PNDM)).model_dump()
    with pytest.raises(ValueError, match="prediction_type"):
        ScheduleSpec(**{**fields, "prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="steps_offset"):
        ScheduleSpec(**{**fields, "scheduler_config": {**SD15_PNDM, "steps_offset": -3}})
    flow = ScheduleSpec.from_config(schedule_from_diffusers(FLOW_CONFIGS["sd3-shift3"])).model_dump()
    with pytest.raises(ValueError, match="needs its scheduler_config"):
        ScheduleSpec(**{**flow, "scheduler_config": None})


@pytest.mark.parametrize("name", sorted(VP_CONFIGS))
def test_every_vp_config_plans_every_step_count_up_to_its_max(name: str) -> None:
    config = schedule_from_diffusers(VP_CONFIGS[name])
    top = max_steps(config)
    # "leading" with steps_offset 1 stops DPM-Solver at 998 steps, its "linspace" at 999.
    assert top >= 998
    for sampler in samplers_for(config):
        for n in (1, 2, 3, 14, 15, 16, 100, 333, 500, top - 1, top):
            plan = get_plan(config, sampler, n)
            assert plan.num_steps == n and np.all(np.diff(plan.timesteps) < 0)


def test_every_registered_sampler_has_its_scheduler() -> None:
    assert set(SAMPLERS) == set(SAMPLER_INFO)
    for info in SAMPLER_INFO.values():
        assert info.scheduler in DEFAULTS


def test_a_whole_manifest_round_trips_a_non_finite_setting() -> None:
    from model_store.manifest import Manifest

    data = json.loads(MNIST_MANIFEST.read_text())
    config = schedule_from_diffusers({**LINSPACE_DPM, "beta_schedule": "squaredcos_cap_v2"})
    data["schedule"] = ScheduleSpec.from_config(config).model_dump()
    manifest = Manifest(**data)
    # pydantic's JSON (the parent's settings apply) and the standard library's both.
    for text in (manifest.model_dump_json(), json.dumps(manifest.model_dump())):
        again = Manifest.model_validate_json(text)
        assert again.schedule.to_config() == config
        assert again.schedule.scheduler_config["lambda_min_clipped"] == float("-inf")  # type: ignore[index]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler_ancestral"])
@pytest.mark.parametrize("steps", [61, 103, 769])
def test_trailing_spacing_gives_exactly_the_steps_asked_for(sampler: str, steps: int) -> None:
    """diffusers' ``np.arange(T, 0, -T / n)`` has one point too many at these step counts (the
    last at timestep -1); the plan keeps the first n, so the MNIST model serves every count."""
    manifest = ModelStore().get("mnist-cfg-unet").manifest
    plan = get_plan(manifest.schedule.to_config(), sampler, steps)
    assert plan.num_steps == steps and plan.timesteps.min() >= 0
