"""What a pipeline folder holds: its ``model_index.json``, checked against what can be served.

Pure file reading (no torch), so the refusals are cheap and unit-testable. Two layouts are
understood: diffusers' ``save_pretrained`` folder (torch weights per component) and Optimum's
``optimum-cli export onnx --task text-to-image`` folder (``unet/model.onnx`` and friends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tooling.importer.errors import ImportRefused

Kind = Literal["text-to-image", "class-conditional"]
Layout = Literal["diffusers", "optimum"]

INDEX_NAME = "model_index.json"

PIPELINES: dict[str, Kind] = {
    "StableDiffusionPipeline": "text-to-image",
    "DiTPipeline": "class-conditional",
}
# Optimum writes the exported pipeline's class, or its own ORT/ONNX pipeline class.
OPTIMUM_PIPELINES: dict[str, Kind] = {
    "StableDiffusionPipeline": "text-to-image",
    "ORTStableDiffusionPipeline": "text-to-image",
    "OnnxStableDiffusionPipeline": "text-to-image",
}

# Required components and the classes served; the scheduler's class is judged with its config.
REQUIRED: dict[Kind, dict[str, frozenset[str] | None]] = {
    "text-to-image": {
        "unet": frozenset({"UNet2DConditionModel"}),
        "text_encoder": frozenset({"CLIPTextModel"}),
        "tokenizer": frozenset({"CLIPTokenizer", "CLIPTokenizerFast"}),
        "vae": frozenset({"AutoencoderKL"}),
        "scheduler": None,
    },
    "class-conditional": {
        "transformer": frozenset({"DiTTransformer2DModel", "Transformer2DModel"}),
        "vae": frozenset({"AutoencoderKL"}),
        "scheduler": None,
    },
}
ONNX_CLASS = "OnnxRuntimeModel"  # how diffusers' ONNX pipelines name an ONNX component
OPTIMUM_FILES = {"unet": "unet/model.onnx", "text_encoder": "text_encoder/model.onnx"}
OPTIMUM_VAE = "vae_decoder/model.onnx"
# Components a text-to-image request never runs: present or not, the images are the same.
UNUSED = {"image_encoder", "vae_encoder"}


@dataclass(frozen=True)
class PipelineLayout:
    """A pipeline folder, its kind and its checked components (name -> (library, class))."""

    root: Path
    pipeline_class: str
    kind: Kind
    layout: Layout
    components: dict[str, tuple[str, str]]
    index: dict[str, Any]
    dropped: list[str] = field(default_factory=list)

    @property
    def denoiser(self) -> str:
        return "unet" if self.kind == "text-to-image" else "transformer"

    def component_class(self, name: str) -> str:
        return self.components[name][1]


def read_layout(root: Path, *, drop_safety_checker: bool = False) -> PipelineLayout:
    """Read and check ``root/model_index.json``; ImportRefused naming the field that fails.

    A safety checker changes images after the fact, so a pipeline with one is refused unless
    ``drop_safety_checker`` says to serve it without (recorded in the manifest's source).
    """
    index_file = root / INDEX_NAME
    if not index_file.is_file():
        raise ImportRefused(INDEX_NAME, f"not found in {root} (expected a diffusers save_pretrained folder)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise ImportRefused(INDEX_NAME, f"is not JSON: {e}") from e
    if not isinstance(index, dict):
        raise ImportRefused(INDEX_NAME, "is not a JSON object")
    layout: Layout = "optimum" if (root / OPTIMUM_FILES["unet"]).is_file() else "diffusers"
    cls = str(index.get("_class_name"))
    known = OPTIMUM_PIPELINES if layout == "optimum" else PIPELINES
    if cls not in known:
        raise ImportRefused("_class_name", f"pipeline {cls} is not supported (supported: {sorted(known)})")
    kind = known[cls]
    components: dict[str, tuple[str, str]] = {}
    dropped: list[str] = []
    for name, value in index.items():
        if name.startswith("_") or not _is_component(value):
            continue  # config values such as requires_safety_checker or id2label
        library, klass = value
        if library is None or klass is None:
            continue  # an absent optional component
        components[name] = (str(library), str(klass))
    required = REQUIRED[kind]
    for name, allowed in required.items():
        if layout == "optimum" and name == "vae" and "vae" not in components:
            continue  # the legacy ONNX layout lists vae_decoder instead
        if name not in components:
            raise ImportRefused(name, f"{cls} needs a {name} component; model_index.json has none")
        klass = components[name][1]
        if layout == "optimum" and klass == ONNX_CLASS and name in OPTIMUM_FILES:
            continue
        if allowed is not None and klass not in allowed:
            raise ImportRefused(
                name, f"component class {klass} is not supported (supported: {sorted(allowed)})"
            )
    for name in sorted(set(components) - set(required)):
        klass = components[name][1]
        if name == "safety_checker":
            if not drop_safety_checker:
                raise ImportRefused(
                    "safety_checker",
                    f"{klass} filters images after decoding and is not served; pass "
                    "--drop-safety-checker to import without it",
                )
            dropped.append(name)
        elif name == "feature_extractor" and "safety_checker" in components:
            dropped.append(name)  # only the safety checker reads it
        elif name in UNUSED or (layout == "optimum" and name == "vae_decoder"):
            if name != "vae_decoder":
                dropped.append(name)
        else:
            raise ImportRefused(name, f"unknown component ({klass}); it is not served")
    if layout == "optimum":
        for name, rel in {**OPTIMUM_FILES, "vae_decoder": OPTIMUM_VAE}.items():
            if not (root / rel).is_file():
                raise ImportRefused(name, f"an Optimum export needs {rel}; it is missing")
    return PipelineLayout(root, cls, kind, layout, components, index, dropped)


def _is_component(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(v is None or isinstance(v, str) for v in value)
    )


def read_config(root: Path, folder: str, name: str = "config.json") -> dict[str, Any]:
    """A component's JSON config (``unet/config.json``, ``scheduler/scheduler_config.json``)."""
    path = root / folder / name
    if not path.is_file():
        raise ImportRefused(folder, f"{folder}/{name} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ImportRefused(folder, f"{folder}/{name} is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise ImportRefused(folder, f"{folder}/{name} is not a JSON object")
    return data
