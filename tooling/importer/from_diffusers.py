"""Import a diffusers ``save_pretrained`` folder: export each component and check it against torch.

Cheap refusals (classes, geometry, sizes, tokenizer) come before any export. Every ONNX file
is then run by onnxruntime next to its torch module: the denoiser on a batch whose rows sit at
different timesteps, at every served latent size (and one more, when only one is served).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from model_store.manifest import TokenizerSpec, sha256_file
from tooling.importer.checks import Case, Check, compare
from tooling.importer.errors import ImportRefused
from tooling.importer.geometry import Geometry, check_text_encoder, dit_geometry, unet_geometry
from tooling.importer.graphs import (
    BATCH,
    LATENT_AXES,
    PIXEL_AXES,
    DiTGraph,
    TextEncoderGraph,
    UNetGraph,
    VaeDecoderGraph,
    export_graph,
)
from tooling.importer.layout import PipelineLayout, read_config
from tooling.importer.onnx_files import check_dynamic_batch, io_specs
from tooling.importer.parts import OnnxFile, Parts
from tooling.importer.sizes import Size, check_sizes
from tooling.importer.tokenizer import convert_tokenizer

DENOISER_OUTPUT = "model_output"


def _quiet() -> None:
    """No progress bars or load reports from the libraries: the CLI prints its own summary."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def load_component(layout: PipelineLayout, name: str) -> torch.nn.Module:
    """A component's torch module, float32 in eval mode, by the class model_index.json names."""
    library, cls = layout.components[name]
    try:
        klass = getattr(importlib.import_module(library), cls)
        model = klass.from_pretrained(layout.root / name)
    except Exception as e:  # missing or corrupt weights, a library without the class: name it
        raise ImportRefused(name, f"cannot load {library}.{cls} from {layout.root / name}: {e}") from e
    return model.float().eval()


def _latent_sizes(geometry: Geometry, sizes: Sequence[Size]) -> list[Size]:
    """Latent (w, h) sizes to check: the served ones, plus one more for a dynamic graph that
    serves a single size (so its height/width axes are proven, not assumed)."""
    latents = list(dict.fromkeys((w // geometry.factor, h // geometry.factor) for w, h in sizes))
    if len(latents) == 1 and not geometry.fixed_latent:
        w, h = latents[0]
        latents.append((w + geometry.latent_multiple, h))
    return latents


def _timesteps(rng: np.random.Generator, n: int, num_train: int) -> np.ndarray:
    """``n`` different timesteps, fractional, spread over the schedule (rows at different steps)."""
    edges = np.linspace(0, num_train - 1, n + 1)
    return rng.uniform(edges[:-1], edges[1:]).astype(np.float32)[::-1].copy()


def _rounded(ts: np.ndarray) -> list[float]:
    return [round(float(t), 1) for t in ts]


def _export_checked(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    names: Sequence[str],
    output: str,
    axes: dict[str, dict[int, str]],
    dest: Path,
    cases: Sequence[Case],
    component: str,
    tolerance: float,
) -> tuple[OnnxFile, Check]:
    files = export_graph(module, example, names, output, axes, dest)
    inputs, outputs = io_specs(onnx.load(str(dest), load_external_data=False), component)
    check_dynamic_batch(inputs + outputs, component)
    check = compare(dest, module, cases, component, tolerance)
    return OnnxFile(dest, inputs, outputs, files[1:]), check


def build(
    layout: PipelineLayout,
    staging: Path,
    *,
    sizes: Sequence[Size],
    num_train_timesteps: int,
    tolerance: float,
    seed: int = 0,
) -> Parts:
    """Export and check every served component of ``layout`` into ``staging``."""
    root = layout.root
    rng = np.random.default_rng(seed)
    vae_cfg = read_config(root, "vae")
    text_cfg: dict[str, Any] | None = None
    if layout.kind == "text-to-image":
        den_cfg = read_config(root, "unet")
        text_cfg = read_config(root, "text_encoder")
        check_text_encoder(text_cfg)
        geometry = unet_geometry(den_cfg, vae_cfg, text_cfg.get("hidden_size"))
    else:
        den_cfg = read_config(root, "transformer")
        geometry = dit_geometry(den_cfg, vae_cfg)
    denoiser = layout.denoiser
    fixed = geometry.native_latent if geometry.fixed_latent else None
    served = check_sizes(
        dict.fromkeys([geometry.native, *sizes]),
        factor=geometry.factor,
        latent_multiple=geometry.latent_multiple,
        denoiser=layout.component_class(denoiser),
        fixed_latent=fixed,
    )
    parts_source: dict[str, Any] = {}
    tokenizer: TokenizerSpec | None = None
    if text_cfg is not None:
        info = convert_tokenizer(
            root / "tokenizer", layout.component_class("tokenizer"), staging / "tokenizer.json"
        )
        positions = int(text_cfg.get("max_position_embeddings", 77))
        if info.model_max_length > positions:
            raise ImportRefused(
                "tokenizer.model_max_length",
                f"{info.model_max_length} exceeds the text encoder's {positions} positions",
            )
        tokenizer = TokenizerSpec(
            file="tokenizer.json",
            sha256=sha256_file(staging / "tokenizer.json"),
            model_max_length=info.model_max_length,
            pad_token_id=info.pad_token_id,
        )
        parts_source["tokenizer_prompts_checked"] = info.prompts_checked

    _quiet()
    c = geometry.latent_channels
    lw, lh = geometry.native_latent
    latents = _latent_sizes(geometry, served)
    checks: dict[str, Check] = {}

    def noise(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    # The denoiser: rows at different timesteps in one call, every latent size checked.
    classes: list[str] = []
    text_encoder: OnnxFile | None = None
    if tokenizer is not None and text_cfg is not None:
        seq, dim = tokenizer.model_max_length, int(text_cfg["hidden_size"])
        names = ("sample", "timestep", "encoder_hidden_states")
        graph: torch.nn.Module = UNetGraph(load_component(layout, "unet"))
        example = (torch.randn(2, c, lh, lw), torch.tensor([10.5, 900.0]), torch.randn(2, seq, dim))
        cases: list[Case] = [
            (
                f"batch 3 at {w}x{h} latent, timesteps {_rounded(ts)}",
                dict(zip(names, (noise(3, c, h, w), ts, noise(3, seq, dim)), strict=True)),
            )
            for w, h in latents
            for ts in [_timesteps(rng, 3, num_train_timesteps)]
        ]
        cases.append(
            (
                "batch 1",
                dict(
                    zip(
                        names,
                        (noise(1, c, lh, lw), _timesteps(rng, 1, num_train_timesteps), noise(1, seq, dim)),
                        strict=True,
                    )
                ),
            )
        )
        axes = {"sample": LATENT_AXES, "timestep": {0: BATCH}, "encoder_hidden_states": {0: BATCH}}
        axes[DENOISER_OUTPUT] = LATENT_AXES
    else:
        n_classes = int(den_cfg["num_embeds_ada_norm"])
        names = ("sample", "timestep", "class_label")
        graph = DiTGraph(load_component(layout, "transformer"), c)
        example = (torch.randn(2, c, lh, lw), torch.tensor([10.5, 900.0]), torch.tensor([1, n_classes]))
        labels = np.array([0, n_classes, rng.integers(0, n_classes)], dtype=np.int64)  # the null class too
        cases = [
            (
                f"batch 3 at {w}x{h} latent, timesteps {_rounded(ts)}, classes {labels.tolist()}",
                dict(zip(names, (noise(3, c, h, w), ts, labels), strict=True)),
            )
            for w, h in latents
            for ts in [_timesteps(rng, 3, num_train_timesteps)]
        ]
        one = (noise(1, c, lh, lw), _timesteps(rng, 1, num_train_timesteps), labels[:1])
        cases.append(("batch 1", dict(zip(names, one, strict=True))))
        axes = {name: {0: BATCH} for name in (*names, DENOISER_OUTPUT)}  # the latent is fixed (see geometry)
        id2label = layout.index.get("id2label") or {}
        classes = [str(id2label.get(str(i), i)) for i in range(n_classes)]
    den_file, checks[denoiser] = _export_checked(
        graph, example, names, DENOISER_OUTPUT, axes, staging / f"{denoiser}.onnx", cases, denoiser, tolerance
    )
    del graph

    if tokenizer is not None and text_cfg is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(staging / "tokenizer.json"))
        vocab = int(text_cfg.get("vocab_size", tok.get_vocab_size()))
        prompts = ["a photo of an astronaut riding a horse on the moon", ""]
        ids = np.array([e.ids for e in tok.encode_batch(prompts)], dtype=np.int64)
        random_ids = rng.integers(0, vocab, (3, tokenizer.model_max_length)).astype(np.int64)
        text_cases: list[Case] = [
            ("2 tokenized prompts", {"input_ids": ids}),
            ("batch 3 of random ids", {"input_ids": random_ids}),
        ]
        text_encoder, checks["text_encoder"] = _export_checked(
            TextEncoderGraph(load_component(layout, "text_encoder")),
            (torch.from_numpy(ids),),
            ("input_ids",),
            "last_hidden_state",
            {"input_ids": {0: BATCH}, "last_hidden_state": {0: BATCH}},
            staging / "text_encoder.onnx",
            text_cases,
            "text_encoder",
            tolerance,
        )

    # Latents as the pipeline decodes them: divided by the scaling factor (about N(0, 1/s^2)).
    scale = 1.0 / geometry.scaling_factor
    vae_cases: list[Case] = [
        (f"batch 2 at {w}x{h} latent", {"latent_sample": noise(2, c, h, w) * scale}) for w, h in latents
    ]
    vae_cases.append(("batch 1", {"latent_sample": noise(1, c, lh, lw) * scale}))
    vae_file, checks["vae_decoder"] = _export_checked(
        VaeDecoderGraph(load_component(layout, "vae")),
        (torch.randn(2, c, lh, lw) * scale,),
        ("latent_sample",),
        "sample",
        {"latent_sample": LATENT_AXES, "sample": PIXEL_AXES},
        staging / "vae_decoder.onnx",
        vae_cases,
        "vae_decoder",
        tolerance,
    )
    architecture_type = "unet2d-condition" if layout.kind == "text-to-image" else "dit"
    return Parts(
        denoiser=den_file,
        vae_decoder=vae_file,
        geometry=geometry,
        sizes=served,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        checks=checks,
        source={"timestep": "per-row", **parts_source},
        architecture={
            "type": architecture_type,
            **{k: v for k, v in den_cfg.items() if not k.startswith("_")},
        },
        classes=classes,
    )
