"""Model manifests: what a model artifact is and how to run it, validated on load.

A manifest lives beside its ONNX file at ``<store>/<name>/<version>/manifest.json``. It is the
single source of a model's I/O contract, image shape, classes, noise schedule, prediction type
and sampler defaults, so a model always samples the way it was trained.
"""

from __future__ import annotations

import hashlib
import re
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


FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
BASE_VARIANT = "fp32"
VARIANT_NAME = r"^[a-z0-9][a-z0-9_-]{0,15}$"  # fp16, int8, ...


class VariantSpec(_Strict):
    """Another file with the same weights and I/O contract at a different precision.

    Inputs and outputs keep the manifest's dtypes (the graph casts at its edges), so samplers
    and workers run a variant exactly as they run the base file; only the arithmetic inside
    differs. ``max_relative_error`` is the export check against the base file.
    """

    file: str = Field(pattern=FILE_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    compute_dtype: Literal["float16"]
    max_relative_error: float = Field(ge=0, le=0.05)
    quality: dict[str, object] = Field(default_factory=dict)


class Manifest(_Strict):
    """The contents of ``manifest.json``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    format: Literal["onnx"] = "onnx"
    file: str = Field(pattern=FILE_PATTERN, description="File name in the version dir (the fp32 base).")
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
    variants: dict[str, VariantSpec] = Field(
        default_factory=dict, description="Other precisions of the same model, by name (e.g. fp16)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if BASE_VARIANT in self.variants:
            raise ValueError(f"variant {BASE_VARIANT!r} is the manifest's own file; do not list it")
        files = [self.file, *(v.file for v in self.variants.values())]
        if len(set(files)) != len(files):
            raise ValueError("every variant needs its own file")
        for name in self.variants:
            if not re.fullmatch(VARIANT_NAME, name):
                raise ValueError(f"variant name {name!r}: lowercase letters, digits, '-' and '_' only")
        if self.null_class != len(self.classes):
            raise ValueError("null_class must be the index after the last class")
        if self.sampling.max_steps > self.schedule.num_train_timesteps:
            raise ValueError("max_steps exceeds the schedule's num_train_timesteps")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def variant_names(self) -> list[str]:
        """``fp32`` (the manifest's own file) first, then the listed variants."""
        return [BASE_VARIANT, *self.variants]

    def variant_file(self, variant: str) -> tuple[str, str]:
        """(file name, sha256) of a variant; ValueError naming the ones there are."""
        if variant == BASE_VARIANT:
            return self.file, self.sha256
        spec = self.variants.get(variant)
        if spec is None:
            raise ValueError(f"{self.ref} has no variant {variant!r} (has {self.variant_names})")
        return spec.file, spec.sha256

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
