"""Export a trained checkpoint to ONNX, check it against torch, and write the manifest.

The graph takes ``sample`` [B,C,H,W] float32, ``timestep`` [B] float32 (fractional values
work) and ``class_label`` [B] int64 (``num_classes`` = no class), with a dynamic batch axis,
and returns ``model_output`` [B,C,H,W]. Weights are stored inside the one ONNX file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model_store.manifest import MANIFEST_NAME, Manifest, sha256_file
from model_store.store import DEFAULT_ROOT
from sampling.schedule import ScheduleConfig
from tooling.training.train import load_model
from tooling.training.unet import UNet

OPSET = 17
INPUTS = ("sample", "timestep", "class_label")
OUTPUT = "model_output"
SAMPLERS = ["dpmpp_2m", "ddim", "euler_ancestral", "ddpm"]


def export_onnx(model: UNet, path: Path) -> None:
    cfg = model.config
    example = (
        torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size),
        torch.tensor([10.5, 999.0]),
        torch.tensor([3, cfg.num_classes]),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=list(INPUTS),
        output_names=[OUTPUT],
        dynamic_axes={name: {0: "batch"} for name in (*INPUTS, OUTPUT)},
        opset_version=OPSET,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def max_relative_error(model: UNet, path: Path, seed: int = 0) -> float:
    """max |ort - torch| / max |torch| over random batches (sizes 1, 3 and 16)."""
    cfg = model.config
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in (1, 3, 16):
        x = rng.standard_normal((b, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
        t = (rng.random(b) * 999).astype(np.float32)  # fractional timesteps
        y = rng.integers(0, cfg.num_classes + 1, b).astype(np.int64)
        (got,) = sess.run([OUTPUT], dict(zip(INPUTS, (x, t, y), strict=True)))
        with torch.no_grad():
            want = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return worst


def build_manifest(checkpoint: dict[str, Any], name: str, version: str, onnx_file: Path) -> Manifest:
    cfg = checkpoint["unet_config"]
    c, s = cfg["in_channels"], cfg["image_size"]
    n = cfg["num_classes"]
    return Manifest(
        name=name,
        version=version,
        file=onnx_file.name,
        sha256=sha256_file(onnx_file),
        opset=OPSET,
        inputs=[
            {"name": "sample", "dtype": "float32", "shape": ["batch", c, s, s]},
            {"name": "timestep", "dtype": "float32", "shape": ["batch"]},
            {"name": "class_label", "dtype": "int64", "shape": ["batch"]},
        ],
        outputs=[{"name": OUTPUT, "dtype": "float32", "shape": ["batch", c, s, s]}],
        image={"channels": c, "height": s, "width": s},
        classes=[str(i) for i in range(n)],
        null_class=n,
        schedule=dataclasses.asdict(ScheduleConfig(**checkpoint["schedule_config"])),
        sampling={
            "samplers": SAMPLERS,
            "default_sampler": "dpmpp_2m",
            "default_steps": 8,
            "min_steps": 1,
            "max_steps": checkpoint["schedule_config"]["num_train_timesteps"],
            "default_guidance_scale": 1.5,  # `make eval`: 100% label agreement, FD near unguided
            "max_guidance_scale": 20.0,
        },
        architecture={"type": "unet", **cfg},
        training={**checkpoint["training"], **checkpoint["train_config"]},
    )


def export(checkpoint_path: Path, out_dir: Path, name: str, version: str) -> tuple[Manifest, float]:
    """Write ``model.onnx`` and ``manifest.json`` into ``out_dir``; returns the check's error."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    model = load_model(checkpoint)
    onnx_file = out_dir / "model.onnx"
    export_onnx(model, onnx_file)
    err = max_relative_error(model, onnx_file)
    if err >= 1e-4:
        raise SystemExit(f"onnxruntime disagrees with torch: max relative error {err:.2e} >= 1e-4")
    manifest = build_manifest(checkpoint, name, version, onnx_file)
    old = out_dir / MANIFEST_NAME
    if old.exists():  # keep measured quality figures across re-exports of the same weights
        previous = json.loads(old.read_text())
        if previous.get("sha256") == manifest.sha256:
            manifest = manifest.model_copy(update={"quality": previous.get("quality", {})})
    old.write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest, err


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("var/train/checkpoint.pt"))
    p.add_argument("--name", default="mnist-cfg-unet")
    p.add_argument("--version", default="1")
    p.add_argument("--out", type=Path, default=None, help="default: model_store/<name>/<version>")
    a = p.parse_args(argv)
    out = a.out or DEFAULT_ROOT / a.name / a.version
    manifest, err = export(a.checkpoint, out, a.name, a.version)
    print(f"wrote {out}/model.onnx (sha256 {manifest.sha256[:12]}...), max relative error vs torch {err:.2e}")


if __name__ == "__main__":
    main()
