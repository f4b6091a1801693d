"""The torch modules exported to ONNX: each component wrapped to the store's I/O contract.

The denoiser takes a timestep per row (``[batch]`` float32), so one call can mix rows at
different steps; a DiT with learned sigma returns only its first ``C`` channels (the noise
prediction; the variance half is unused by the samplers, as in diffusers' DiTPipeline).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from tooling.importer.onnx_files import OPSET, load_full, save_flat

BATCH = "batch"
LATENT_AXES = {0: BATCH, 2: "height", 3: "width"}
PIXEL_AXES = {0: BATCH, 2: "pixel_height", 3: "pixel_width"}


class UNetGraph(torch.nn.Module):
    """(sample, timestep [B], encoder_hidden_states) -> model_output."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet: Any = unet  # a diffusers/transformers model

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class DiTGraph(torch.nn.Module):
    """(sample, timestep [B], class_label [B]) -> the first ``channels`` output channels."""

    def __init__(self, transformer: Any, channels: int) -> None:
        super().__init__()
        self.transformer: Any = transformer  # a diffusers/transformers model
        self.channels = channels

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_label: torch.Tensor
    ) -> torch.Tensor:
        out = self.transformer(sample, timestep=timestep, class_labels=class_label, return_dict=False)[0]
        return out[:, : self.channels]


class TextEncoderGraph(torch.nn.Module):
    """input_ids -> last_hidden_state (what diffusers' pipeline uses as prompt_embeds)."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder: Any = text_encoder  # a diffusers/transformers model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids, return_dict=False)[0]


class VaeDecoderGraph(torch.nn.Module):
    """latent_sample (already ``latents / scaling_factor``) -> sample, the image in about [-1, 1]."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae: Any = vae  # a diffusers/transformers model

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


def export_graph(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_name: str,
    dynamic_axes: Mapping[str, Mapping[int, str]],
    dest: Path,
) -> list[Path]:
    """Export with the TorchScript exporter into a scratch folder beside ``dest`` (big models
    spill weights into one file per tensor there), then write ``dest`` flat; the files written."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.stem}-", dir=dest.parent))
    try:
        path = scratch / dest.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
            torch.onnx.export(
                module.eval(),
                tuple(example),
                str(path),
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
                opset_version=OPSET,
                dynamo=False,
            )
            want = module(*example).shape
        model = load_full(path)
        _pin_fixed_dims(model.graph.output[0], want, dynamic_axes.get(output_name, {}))
        return save_flat(model, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pin_fixed_dims(value: onnx.ValueInfoProto, shape: Sequence[int], dynamic: Mapping[int, str]) -> None:
    """Write the sizes of an output's fixed axes (the exporter names some it cannot infer,
    e.g. the text encoder's sequence axis) so the manifest states them as numbers."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        return
    for i, d in enumerate(dims):
        if i not in dynamic and not d.HasField("dim_value"):
            d.dim_value = int(shape[i])
