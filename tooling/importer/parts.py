"""What an import path (diffusers weights or an Optimum export) hands to the manifest writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store.manifest import ComponentSpec, TokenizerSpec, sha256_file
from tooling.importer.geometry import Geometry
from tooling.importer.sizes import Size

if TYPE_CHECKING:
    from tooling.importer.checks import Check


@dataclass(frozen=True)
class OnnxFile:
    """One ONNX file in the staging folder and the I/O read back from it."""

    path: Path
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    extra_files: list[Path] = field(default_factory=list)  # external weights, if any

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)

    def component_spec(self) -> ComponentSpec:
        return ComponentSpec.model_validate(
            {"file": self.path.name, "sha256": self.sha256, "inputs": self.inputs, "outputs": self.outputs}
        )


@dataclass
class Parts:
    """Everything the manifest needs beyond the schedule: files, geometry, checks, provenance."""

    denoiser: OnnxFile
    vae_decoder: OnnxFile
    geometry: Geometry
    sizes: list[Size]
    text_encoder: OnnxFile | None = None
    tokenizer: TokenizerSpec | None = None
    checks: dict[str, Check] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file written, ONNX weights included."""
        onnx = [f for f in (self.denoiser, self.text_encoder, self.vae_decoder) if f is not None]
        out = [p for f in onnx for p in (f.path, *f.extra_files)]
        if self.tokenizer is not None:
            out.append(self.denoiser.path.with_name(self.tokenizer.file))
        return out
