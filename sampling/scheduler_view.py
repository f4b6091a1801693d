"""What a diffusers scheduler class would see of a pipeline's scheduler config.

``SomeScheduler.from_config(cfg)`` keeps only the keys that class's ``__init__`` accepts and
gives every other key that class's own default (keys listed in ``_use_default_values`` count as
missing). So one pipeline config means different settings to different samplers: a PNDM config
without ``timestep_spacing`` gives DDIM "leading" but DPM-Solver "linspace". Each sampler
resolves its own view here, from the raw config its ``ScheduleConfig`` carries.

The defaults below are diffusers 0.42's ``__init__`` defaults (a unit test pins them against
the installed diffusers); this module imports nothing outside numpy's world.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sampling.schedule import ScheduleConfig

INF = float("inf")

_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}
_THRESHOLDING: dict[str, Any] = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {
        **_BETAS,
        "variance_type": "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
        **_THRESHOLDING,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    },
    "DDIMScheduler": {
        **_BETAS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        **_THRESHOLDING,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    },
    "DPMSolverMultistepScheduler": {
        **_BETAS,
        "solver_order": 2,
        "prediction_type": "epsilon",
        **_THRESHOLDING,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -INF,
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    },
    "EulerDiscreteScheduler": {
        **_BETAS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    },
    "EulerAncestralDiscreteScheduler": {
        **_BETAS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    },
    "FlowMatchEulerDiscreteScheduler": {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "invert_sigmas": False,
        "shift_terminal": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "time_shift_type": "exponential",
        "stochastic_sampling": False,
    },
}


class UnsupportedSchedule(ValueError):
    """A scheduler config the samplers cannot honour exactly; names the field and its value."""

    def __init__(self, field: str, value: object, reason: str, scheduler: str | None = None) -> None:
        where = f" (as {scheduler} reads it)" if scheduler else ""
        super().__init__(f"scheduler config field {field!r} = {value!r}{where}: {reason}")
        self.field = field
        self.value = value


def freeze(value: Any) -> Any:
    """A hashable copy of a JSON value (lists become tuples, dicts sorted item tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON value ``freeze`` made hashable, for a manifest (only the top level is a dict)."""
    return {k: _thaw_value(v) for k, v in value}


def _thaw_value(value: Any) -> Any:
    return list(_thaw_value(v) for v in value) if isinstance(value, tuple) else value


def from_config_view(raw: Mapping[str, Any], scheduler: str) -> dict[str, Any]:
    """The init arguments ``<scheduler>.from_config(raw)`` would use: raw values for the keys that
    class accepts (unless listed in ``_use_default_values``), its defaults for the rest."""
    defaults = DEFAULTS[scheduler]
    used_defaults = set(raw.get("_use_default_values") or ())
    view = dict(defaults)
    for key, value in raw.items():
        if key in defaults and key not in used_defaults:
            view[key] = value
    return view


def sampler_view(config: ScheduleConfig, scheduler: str, legacy: Mapping[str, Any]) -> dict[str, Any]:
    """The settings one sampler follows under ``config``.

    With a pipeline's raw scheduler config: that config as ``scheduler.from_config`` sees it.
    Without (models trained here): the class defaults overlaid with the schedule's own fields
    and the sampler's fixed ``legacy`` settings, which is what the samplers always did.
    """
    if config.scheduler_config is not None:
        return from_config_view(dict(config.scheduler_config), scheduler)
    own = {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "prediction_type": config.prediction_type,
        "clip_sample": config.clip_sample,
        "rescale_betas_zero_snr": config.rescale_betas_zero_snr,
    }
    defaults = DEFAULTS[scheduler]
    view = dict(defaults)
    view.update({k: v for k, v in own.items() if k in defaults})
    view.update(legacy)
    return view


def require(view: Mapping[str, Any], field: str, allowed: tuple[Any, ...], scheduler: str, why: str) -> None:
    """Refuse a setting outside ``allowed``, naming the field and value."""
    value = view[field]
    if not any(value == a and type(value) is type(a) for a in allowed):
        # bool is an int subclass: True must not pass for 1 (or 1 for True).
        raise UnsupportedSchedule(field, value, why, scheduler)


def check_common_vp(view: Mapping[str, Any], scheduler: str) -> None:
    """Settings every variance-preserving sampler handles the same way."""
    if view["trained_betas"] is not None:
        raise UnsupportedSchedule(
            "trained_betas", "[...]", "explicit beta tables are not supported", scheduler
        )
    require(
        view,
        "beta_schedule",
        ("linear", "scaled_linear", "squaredcos_cap_v2"),
        scheduler,
        "supported: linear, scaled_linear, squaredcos_cap_v2",
    )
    require(
        view,
        "prediction_type",
        ("epsilon", "v_prediction", "sample"),
        scheduler,
        "supported: epsilon, v_prediction, sample",
    )
    n = view["num_train_timesteps"]
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 100_000:
        raise UnsupportedSchedule("num_train_timesteps", n, "must be an integer in 2..100000", scheduler)
    require(
        view,
        "timestep_spacing",
        ("linspace", "leading", "trailing"),
        scheduler,
        "supported: linspace, leading, trailing",
    )
    offset = view["steps_offset"]
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < n:
        raise UnsupportedSchedule(
            "steps_offset", offset, "must be an integer in 0..num_train_timesteps-1", scheduler
        )
    require(view, "rescale_betas_zero_snr", (False, True), scheduler, "must be a boolean")
    if view["rescale_betas_zero_snr"] and view["prediction_type"] == "epsilon":
        # alpha_bar = 0 at the last timestep: x0 from a noise prediction divides by zero there.
        raise UnsupportedSchedule(
            "rescale_betas_zero_snr", True, "zero terminal SNR needs v_prediction or sample", scheduler
        )
    if "thresholding" in view:
        require(view, "thresholding", (False,), scheduler, "dynamic thresholding is not supported")
    for key in ("beta_start", "beta_end"):
        if not isinstance(view[key], int | float) or isinstance(view[key], bool):
            raise UnsupportedSchedule(key, view[key], "must be a number", scheduler)
