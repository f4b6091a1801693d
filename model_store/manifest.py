"""Model manifests: what a model artifact is and how to run it, validated on load.

A manifest lives beside its ONNX file at ``<store>/<name>/<version>/manifest.json``. It is the
single source of a model's I/O contract, image shape, classes, noise schedule, prediction type
and sampler defaults, so a model always samples the way it was trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from sampling.diffusers_config import raw_scheduler_config, schedule_from_diffusers
from sampling.schedule import ScheduleConfig
from sampling.scheduler_view import freeze

MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["float32", "float16", "int64"]
    shape: list[int | str] = Field(description="Dimensions; strings name dynamic axes.")


class ImageSpec(_Strict):
    """The output image at the model's native size."""

    channels: int = Field(ge=1, le=4)
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)


class SizeSpec(_Strict):
    """An output size (pixels) the model serves; latent models need multiples of the VAE factor."""

    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)


FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SHA256 = r"^[0-9a-f]{64}$"


class ComponentSpec(_Strict):
    """One more ONNX file of a pipeline (text encoder, VAE decoder): its file and I/O contract.

    Only the first input and the first output are used: token ids in and hidden states out for
    a text encoder; scaled latents in and an image in [-1, 1] out for a VAE decoder.
    """

    file: str = Field(pattern=FILE_PATTERN)
    sha256: str = Field(pattern=SHA256)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)


class TokenizerSpec(_Strict):
    """A ``tokenizers`` JSON file, tokenized as diffusers' pipelines do: padded to
    ``model_max_length`` with ``pad_token_id`` and truncated there (special tokens included)."""

    file: str = Field(pattern=FILE_PATTERN)
    sha256: str = Field(pattern=SHA256)
    model_max_length: int = Field(ge=2, le=4096)
    pad_token_id: int = Field(ge=0)


class LatentSpec(_Strict):
    """Where the denoiser works: ``channels`` x (height / factor) x (width / factor), and how
    the VAE decoder wants it (``latent / scaling_factor + shift_factor``)."""

    channels: int = Field(ge=1, le=64)
    factor: int = Field(ge=1, le=64, description="VAE downsampling factor (pixels per latent cell).")
    scaling_factor: float = Field(gt=0)
    shift_factor: float = 0.0


_NONFINITE_IN = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


def _nonfinite_out(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


class ScheduleSpec(_Strict):
    """The noise schedule the model was trained with.

    An imported pipeline also keeps its raw ``scheduler_config`` (``scheduler_config.json``):
    each sampler then follows it as its diffusers scheduler's ``from_config`` would, and the
    fields above must be what ``sampling.diffusers_config.schedule_from_diffusers`` derives from
    it (build the spec with ``ScheduleSpec.from_config``). Without it (models trained here) the
    samplers keep their fixed settings.
    """

    num_train_timesteps: int = Field(ge=1, le=100_000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "v_prediction", "sample", "flow"]
    clip_sample: bool = Field(default=False, description="Clip x0 to [-1, 1] in DDPM and DDIM.")
    rescale_betas_zero_snr: bool = False
    scheduler_config: dict[str, Any] | None = Field(
        default=None, description="The imported pipeline's own scheduler config, verbatim."
    )

    # Non-finite numbers (DPM-Solver's lambda_min_clipped = -inf) survive pydantic's JSON, which
    # would write null, as the strings "-Infinity" / "Infinity" / "NaN" (Python's json spelling).
    @field_serializer("scheduler_config", when_used="json")
    def _nonfinite_as_strings(self, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else {k: _nonfinite_out(v) for k, v in value.items()}

    @field_validator("scheduler_config", mode="before")
    @classmethod
    def _nonfinite_from_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _NONFINITE_IN.get(v, v) if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _matches_scheduler_config(self) -> ScheduleSpec:
        if self.scheduler_config is not None:
            derived = schedule_from_diffusers(self.scheduler_config)  # UnsupportedSchedule is a ValueError
            mine = self._config()
            for f in dataclasses.fields(ScheduleConfig):
                if f.name != "scheduler_config" and getattr(mine, f.name) != getattr(derived, f.name):
                    raise ValueError(
                        f"schedule.{f.name} = {getattr(mine, f.name)!r} but the scheduler_config gives "
                        f"{getattr(derived, f.name)!r}"
                    )
        elif self.prediction_type == "flow":
            raise ValueError("a flow schedule needs its scheduler_config")
        return self

    def _config(self) -> ScheduleConfig:
        fields = self.model_dump(exclude={"scheduler_config"})
        frozen = None if self.scheduler_config is None else freeze(self.scheduler_config)
        return ScheduleConfig(**fields, scheduler_config=frozen)

    def to_config(self) -> ScheduleConfig:
        """The schedule the samplers use (hashable; plans are cached by it)."""
        return self._config()

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> ScheduleSpec:
        """The manifest's form of a schedule, e.g. of ``schedule_from_diffusers(...)``'s result."""
        fields = dataclasses.asdict(config)
        fields["scheduler_config"] = raw_scheduler_config(config)
        return cls(**fields)


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


BASE_VARIANT = "fp32"
VARIANT_NAME = r"^[a-z0-9][a-z0-9_-]{0,15}$"  # fp16, int8, ...


class VariantSpec(_Strict):
    """Another file with the same weights and I/O contract at a different precision.

    Inputs and outputs keep the manifest's dtypes (the graph casts at its edges), so samplers
    and workers run a variant exactly as they run the base file; only the arithmetic inside
    differs. ``max_relative_error`` is the export check against the base file.
    """

    file: str = Field(pattern=FILE_PATTERN)
    sha256: str = Field(pattern=SHA256)
    compute_dtype: Literal["float16"]
    max_relative_error: float = Field(ge=0, le=0.05)
    quality: dict[str, object] = Field(default_factory=dict)


ModelKind = Literal["class-conditional", "text-to-image"]


class Manifest(_Strict):
    """The contents of ``manifest.json``.

    The top-level ``file``, ``inputs`` and ``outputs`` are the denoiser's: ``(sample, timestep
    [batch], condition)`` where the condition is a class label per row (class-conditional) or
    the text encoder's hidden states per row (text-to-image). A latent model also names its
    ``latent`` space and ``vae_decoder``; a text model its ``text_encoder`` and ``tokenizer``.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    format: Literal["onnx"] = "onnx"
    file: str = Field(pattern=FILE_PATTERN, description="File name in the version dir (the fp32 base).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(ge=17)
    inputs: list[TensorSpec] = Field(min_length=3, max_length=3)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    image: ImageSpec
    kind: ModelKind = "class-conditional"
    classes: list[str] = Field(default_factory=list, description="Class names (class-conditional).")
    null_class: int | None = Field(
        default=None, ge=0, description="Class index that means 'no class' (unconditional)."
    )
    sizes: list[SizeSpec] = Field(
        default_factory=list, description="Output sizes served; empty: the native size only."
    )
    latent: LatentSpec | None = None
    vae_decoder: ComponentSpec | None = None
    text_encoder: ComponentSpec | None = None
    tokenizer: TokenizerSpec | None = None
    source: dict[str, object] = Field(default_factory=dict, description="What the model was imported from.")
    external_data: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each file of ONNX weights kept outside a graph file (graphs over "
        "protobuf's 2 GB limit), by file name; onnxruntime reads them from beside the graph.",
    )
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
        if self.kind == "class-conditional":
            if not self.classes or self.null_class != len(self.classes):
                raise ValueError("a class-conditional model needs classes, and null_class after the last")
            if self.text_encoder is not None or self.tokenizer is not None:
                raise ValueError("a class-conditional model has no text_encoder or tokenizer")
        elif self.text_encoder is None or self.tokenizer is None:
            raise ValueError("a text-to-image model needs a text_encoder and a tokenizer")
        elif self.classes or self.null_class is not None:
            raise ValueError("a text-to-image model has no classes or null_class")
        for file, digest in self.external_data.items():
            if not re.fullmatch(FILE_PATTERN, file) or not re.fullmatch(SHA256, digest):
                raise ValueError(f"external_data: {file!r} needs a plain file name and a sha256")
        if (self.latent is None) != (self.vae_decoder is None):
            raise ValueError("latent and vae_decoder go together")
        factor = self.latent.factor if self.latent is not None else 1
        for width, height in self.served_sizes:
            if width % factor or height % factor:
                raise ValueError(f"size {width}x{height} is not a multiple of the latent factor {factor}")
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
        """The native output image, [C, H, W]."""
        return (self.image.channels, self.image.height, self.image.width)

    @property
    def unconditional_class(self) -> int:
        """A class-conditional model's null class; ValueError for a text model."""
        if self.null_class is None:
            raise ValueError(f"{self.ref} is not class-conditional")
        return self.null_class

    @property
    def served_sizes(self) -> list[tuple[int, int]]:
        """(width, height) pairs a request may ask for; the native size first."""
        native = (self.image.width, self.image.height)
        rest = [(s.width, s.height) for s in self.sizes if (s.width, s.height) != native]
        return [native, *dict.fromkeys(rest)]

    def sample_shape(self, width: int | None = None, height: int | None = None) -> tuple[int, int, int]:
        """What the denoiser works on for an image of this size: the latent, or the image itself."""
        w, h = width or self.image.width, height or self.image.height
        if self.latent is None:
            return (self.image.channels, h, w)
        return (self.latent.channels, h // self.latent.factor, w // self.latent.factor)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
