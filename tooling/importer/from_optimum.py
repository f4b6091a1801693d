"""Import an Optimum ONNX export (``optimum-cli export onnx --task text-to-image``).

The folder holds ``unet/model.onnx``, ``text_encoder/model.onnx``, ``vae_decoder/model.onnx``
(each beside its component's config.json), ``tokenizer/`` and ``scheduler/``. The graphs are
copied, not re-exported: their I/O is read into the manifest as it is (the worker reads names
from there), int32 inputs are widened to int64 at the graph edge, and a UNet whose timestep is
one value for the whole batch (Optimum exports a scalar) is rewritten to take one per row
(``tooling.importer.timestep``) and checked row by row, or refused with the command that
re-exports it. With no torch weights, each graph is run in onnxruntime at
every batch shape and served size instead of being compared with torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_store.manifest import TokenizerSpec, sha256_file
from tooling.importer.checks import Case, run_onnx, session, smoke
from tooling.importer.errors import ImportRefused
from tooling.importer.geometry import check_text_encoder, unet_geometry
from tooling.importer.layout import OPTIMUM_FILES, OPTIMUM_VAE, PipelineLayout, read_config
from tooling.importer.onnx_files import (
    check_dynamic_batch,
    io_specs,
    load_full,
    save_flat,
    widen_int32_inputs,
)
from tooling.importer.parts import OnnxFile, Parts
from tooling.importer.sizes import Size, check_sizes
from tooling.importer.timestep import per_row_timestep
from tooling.importer.tokenizer import convert_tokenizer

Spec = dict[str, Any]
FOLDERS = {"unet": "unet", "text_encoder": "text_encoder", "vae_decoder": "vae_decoder"}
SOURCES = {**OPTIMUM_FILES, "vae_decoder": OPTIMUM_VAE}


def _copy(root: Path, component: str, staging: Path, rewritten: list[str]) -> tuple[OnnxFile, list[str]]:
    """Copy one graph flat into the staging folder (int32 inputs widened, a scalar UNet
    timestep made per-row, named in ``rewritten``); its file and the inputs widened."""
    model = load_full(root / SOURCES[component])
    widened = widen_int32_inputs(model)
    # Graph inputs in role order (the manifest's order); ONNX does not care about it.
    if component == "unet":
        weights = {init.name for init in model.graph.initializer}
        inputs = [v for v in model.graph.input if v.name not in weights]
        ordered = _unet_roles(inputs)
        kept = [v for v in model.graph.input if v.name in weights]
        del model.graph.input[:]
        model.graph.input.extend([*ordered, *kept])
        batch = ordered[0].type.tensor_type.shape.dim[0].dim_param or "batch"
        if per_row_timestep(model, ordered[1].name, batch):
            rewritten.append(ordered[1].name)
    files = save_flat(model, staging / f"{component}.onnx")
    ins, outs = io_specs(model, component)
    return OnnxFile(files[0], ins, outs, files[1:]), widened


def _unet_roles(inputs: Sequence[Any]) -> list[Any]:
    """(sample, timestep, encoder_hidden_states) by rank: 4-D, 0/1-D, 3-D; refuse any other."""
    by_rank: dict[int, list[Any]] = {}
    for v in inputs:
        by_rank.setdefault(len(v.type.tensor_type.shape.dim), []).append(v)
    sample, hidden = by_rank.get(4, []), by_rank.get(3, [])
    timestep = by_rank.get(0, []) + by_rank.get(1, [])
    if len(sample) != 1 or len(timestep) != 1 or len(hidden) != 1 or len(inputs) != 3:
        names = [v.name for v in inputs]
        extra = [n for n in names if n not in ("sample", "timestep", "encoder_hidden_states")]
        raise ImportRefused(
            f"unet.{extra[0]}" if extra else "unet.inputs",
            f"graph inputs {names}: only (sample, timestep, encoder_hidden_states) are served",
        )
    return [sample[0], timestep[0], hidden[0]]


def _feed(spec: Spec, rows: int, latent: Size, seq: int, rng: np.random.Generator, high: int) -> np.ndarray:
    """A random input matching a TensorSpec: named axes are the batch, latent size or sequence."""
    shape = []
    for i, d in enumerate(spec["shape"]):
        if isinstance(d, int):
            shape.append(d)
        elif i == 0:
            shape.append(rows)
        elif len(spec["shape"]) == 4:
            shape.append(latent[1] if i == 2 else latent[0])
        else:
            shape.append(seq)
    if spec["dtype"] == "int64":
        return rng.integers(0, high, shape).astype(np.int64)
    return rng.standard_normal(shape).astype(spec["dtype"])


def _timestep_mode(path: Path, specs: list[Spec], latent: Size, seq: int, rng: np.random.Generator) -> str:
    """ "per-row" when a batch's rows at different timesteps give what each gives alone."""
    t_spec = specs[1]
    if len(t_spec["shape"]) == 0 or t_spec["shape"] == [1]:
        return "shared"
    sess = session(path)
    sample = _feed(specs[0], 2, latent, seq, rng, 1)
    hidden = _feed(specs[2], 2, latent, seq, rng, 1)
    ts = np.array([900, 20], dtype=t_spec["dtype"])
    names = [s["name"] for s in specs]
    try:
        both = run_onnx(sess, dict(zip(names, (sample, ts, hidden), strict=True)), "unet", "two timesteps")
    except ImportRefused:
        return "shared"  # a [steps] axis that must be 1, or must match nothing: not per row
    for i in range(2):
        feeds = (sample[i : i + 1], ts[i : i + 1], hidden[i : i + 1])
        alone = run_onnx(sess, dict(zip(names, feeds, strict=True)), "unet", f"row {i} alone")
        if not np.allclose(both[i : i + 1], alone, rtol=1e-4, atol=1e-5):
            return "shared"
    return "per-row"


def build(
    layout: PipelineLayout, staging: Path, *, sizes: Sequence[Size], num_train_timesteps: int, seed: int = 0
) -> Parts:
    """Copy, inspect and run the three graphs of an Optimum export into ``staging``."""
    root = layout.root
    rng = np.random.default_rng(seed)
    unet_cfg = read_config(root, "unet")
    vae_cfg = read_config(root, "vae_decoder")
    text_cfg = read_config(root, "text_encoder") if (root / "text_encoder" / "config.json").is_file() else {}
    check_text_encoder(text_cfg)
    geometry = unet_geometry(unet_cfg, vae_cfg, text_cfg.get("hidden_size"))

    info = convert_tokenizer(
        root / "tokenizer", layout.component_class("tokenizer"), staging / "tokenizer.json"
    )
    tokenizer = TokenizerSpec(
        file="tokenizer.json",
        sha256=sha256_file(staging / "tokenizer.json"),
        model_max_length=info.model_max_length,
        pad_token_id=info.pad_token_id,
    )
    rewritten: list[str] = []
    unet, widened_u = _copy(root, "unet", staging, rewritten)
    text, widened_t = _copy(root, "text_encoder", staging, rewritten)
    vae, widened_v = _copy(root, "vae_decoder", staging, rewritten)

    s_spec, t_spec, h_spec = unet.inputs
    check_dynamic_batch([s_spec, h_spec, *unet.outputs], "unet")
    check_dynamic_batch(text.inputs[:1] + text.outputs[:1], "text_encoder")
    check_dynamic_batch(vae.inputs[:1] + vae.outputs[:1], "vae_decoder")
    _check_ranks(text, vae, unet)
    seq = info.model_max_length
    for component, spec in (("unet", h_spec), ("text_encoder", text.inputs[0])):
        fixed_seq = spec["shape"][1]
        if isinstance(fixed_seq, int) and fixed_seq != seq:
            raise ImportRefused(
                f"{component}.{spec['name']}", f"sequence length {fixed_seq} != tokenizer's {seq}"
            )

    fixed = s_spec["shape"][2:]
    fixed_latent = (fixed[1], fixed[0]) if all(isinstance(d, int) for d in fixed) else None
    if fixed_latent is not None:  # a graph exported at one size serves that size only
        geometry = dataclasses.replace(geometry, fixed_latent=True, native_latent=fixed_latent)
    served = check_sizes(
        dict.fromkeys([geometry.native, *sizes]),
        factor=geometry.factor,
        latent_multiple=geometry.latent_multiple,
        denoiser="the UNet graph",
        fixed_latent=fixed_latent,
    )
    latents = list(dict.fromkeys((w // geometry.factor, h // geometry.factor) for w, h in served))
    mode = _timestep_mode(unet.path, unet.inputs, latents[0], seq, rng)
    if mode != "per-row":
        raise ImportRefused(
            f"unet.{t_spec['name']}",
            f"the graph takes one timestep for the whole batch ({t_spec['shape']}) and could not be "
            "rewritten to take one per row; export the diffusers pipeline folder it came from with "
            "`make import SRC=<that folder> NAME=<name>` instead",
        )

    def unet_case(rows: int, latent: Size) -> Case:
        t_rows = rows if mode == "per-row" else 1
        ts = np.linspace(num_train_timesteps - 1, 1, t_rows).astype(t_spec["dtype"])
        if not t_spec["shape"]:
            ts = ts.reshape(())
        feeds = {
            s_spec["name"]: _feed(s_spec, rows, latent, seq, rng, 1),
            t_spec["name"]: ts,
            h_spec["name"]: _feed(h_spec, rows, latent, seq, rng, 1),
        }
        return (f"batch {rows} at {latent[0]}x{latent[1]} latent", feeds)

    vocab = int(text_cfg.get("vocab_size", 2))
    checks = {
        "unet": smoke(unet.path, [unet_case(b, lat) for lat in latents for b in (1, 3)], "unet"),
        "text_encoder": smoke(
            text.path,
            [
                (f"batch {b}", {text.inputs[0]["name"]: _feed(text.inputs[0], b, (1, 1), seq, rng, vocab)})
                for b in (1, 3)
            ],
            "text_encoder",
        ),
        "vae_decoder": smoke(
            vae.path,
            [
                (
                    f"batch {b} at {w}x{h} latent",
                    {vae.inputs[0]["name"]: _feed(vae.inputs[0], b, (w, h), seq, rng, 1)},
                )
                for w, h in latents
                for b in (1, 2)
            ],
            "vae_decoder",
        ),
    }
    widened = {
        k: v for k, v in (("unet", widened_u), ("text_encoder", widened_t), ("vae_decoder", widened_v)) if v
    }
    source: dict[str, Any] = {"timestep": mode, "tokenizer_prompts_checked": info.prompts_checked}
    if rewritten:  # the scalar timestep of Optimum's export, now one per row (checked above)
        source["timestep_rewritten"] = "Unsqueeze(timestep, [0]) -> Reshape(timestep, [-1])"
    if widened:
        source["int32_inputs_widened"] = widened
    return Parts(
        denoiser=unet,
        vae_decoder=vae,
        geometry=geometry,
        sizes=served,
        text_encoder=text,
        tokenizer=tokenizer,
        checks=checks,
        source=source,
        architecture={
            "type": "unet2d-condition",
            **{k: v for k, v in unet_cfg.items() if not k.startswith("_")},
        },
    )


def _check_ranks(text: OnnxFile, vae: OnnxFile, unet: OnnxFile) -> None:
    """The first input and output of each graph must be what the worker feeds and reads."""
    wants = (
        ("text_encoder", text.inputs[0], 2, "int64"),
        ("text_encoder", text.outputs[0], 3, "float32"),
        ("vae_decoder", vae.inputs[0], 4, "float32"),
        ("vae_decoder", vae.outputs[0], 4, "float32"),
        ("unet", unet.outputs[0], 4, "float32"),
    )
    for component, spec, rank, dtype in wants:
        if len(spec["shape"]) != rank or spec["dtype"] != dtype:
            raise ImportRefused(
                f"{component}.{spec['name']}",
                f"{spec['dtype']} {spec['shape']}: expected a {rank}-D {dtype} tensor",
            )
