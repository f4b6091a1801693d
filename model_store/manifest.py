"""Model manifests: what a model artifact is and how to run it, validated on load.

A manifest lives beside its ONNX file at ``<store>/<name>/<version>/manifest.json``. It is the
single source of a model's I/O contract, image shape, classes, noise schedule, prediction type
and sampler defaults, so a model always samples the way it was trained.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sampling.schedule import ScheduleConfig

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "float16", "int64"]
    shape: list[int | str] = Field(description="Dimensions; strings name dynamic axes.")


class ImageSpec(_Strict):
    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)


class ScheduleSpec(_Strict):
    num_train_timesteps: int = Field(ge=1, le=100_000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "v_prediction", "sample"]
    clip_sample: bool = Field(default=False, description="Clip x0 to [-1, 1] in DDPM and DDIM.")

    def to_config(self) -> ScheduleConfig:
        return ScheduleConfig(**self.model_dump())


class SamplingSpec(_Strict):
    samplers: list[str] = Field(min_length=1)
    default_sampler: str
    default_steps: int = Field(ge=1)
    min_steps: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    default_guidance_scale: float = Field(ge=0)
    max_guidance_scale: float = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SamplingSpec:
        if self.default_sampler not in self.samplers:
            raise ValueError(f"default_sampler {self.default_sampler!r} is not in samplers")
        if not self.min_steps <= self.default_steps <= self.max_steps:
            raise ValueError("default_steps must lie within min_steps..max_steps")
        if self.default_guidance_scale > self.max_guidance_scale:
            raise ValueError("default_guidance_scale exceeds max_guidance_scale")
        return self


class Manifest(_Strict):
    """The contents of ``manifest.json``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    format: Literal["onnx"] = "onnx"
    file: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="File name in the version dir."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(ge=17)
    inputs: list[TensorSpec] = Field(min_length=3, max_length=3)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    image: ImageSpec
    classes: list[str] = Field(min_length=1)
    null_class: int = Field(ge=0, description="Class index that means 'no class' (unconditional).")
    schedule: ScheduleSpec
    sampling: SamplingSpec
    architecture: dict[str, object] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    quality: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.null_class != len(self.classes):
            raise ValueError("null_class must be the index after the last class")
        if self.sampling.max_steps > self.schedule.num_train_timesteps:
            raise ValueError("max_steps exceeds the schedule's num_train_timesteps")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image.channels, self.image.height, self.image.width)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
