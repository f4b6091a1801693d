"""Model stores for tests that need more than the bundled MNIST model.

``text_model_store`` copies the MNIST entry and adds a text-to-image manifest whose files are
dummies: enough for a gateway, which reads manifests but never opens (or verifies) model
files. A worker cannot load the dummy model. ``add_class_model_copy`` adds a second, real
class-conditional model (the MNIST files under another name) that workers can serve.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

MNIST = "mnist-cfg-unet"
TEXT_MODEL = "tiny-sd"
TEXT_NATIVE = (64, 64)  # (width, height)
TEXT_SIZES = [(64, 64), (96, 64), (64, 96), (128, 128)]
TEXT_MAX_TOKENS = 77


def _dummy_file(directory: Path, name: str) -> str:
    """Write a small placeholder file; its sha256, so the manifest is consistent anyway."""
    data = f"not a model: {name}\n".encode()
    (directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _tensor(name: str, dtype: str, shape: list[int | str]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def text_manifest(directory: Path, name: str = TEXT_MODEL) -> dict[str, Any]:
    """A Stable-Diffusion-shaped text-to-image manifest, its files written as dummies."""
    width, height = TEXT_NATIVE
    latent_4d: list[int | str] = ["batch", 4, "height", "width"]
    return {
        "name": name,
        "version": "1",
        "file": "unet.onnx",
        "sha256": _dummy_file(directory, "unet.onnx"),
        "opset": 17,
        "inputs": [
            _tensor("sample", "float32", latent_4d),
            _tensor("timestep", "float32", ["batch"]),
            _tensor("encoder_hidden_states", "float32", ["batch", TEXT_MAX_TOKENS, 32]),
        ],
        "outputs": [_tensor("model_output", "float32", latent_4d)],
        "image": {"channels": 3, "height": height, "width": width},
        "kind": "text-to-image",
        "sizes": [{"width": w, "height": h} for w, h in TEXT_SIZES],
        "latent": {"channels": 4, "factor": 8, "scaling_factor": 0.18215},
        "vae_decoder": {
            "file": "vae_decoder.onnx",
            "sha256": _dummy_file(directory, "vae_decoder.onnx"),
            "inputs": [_tensor("latent_sample", "float32", latent_4d)],
            "outputs": [_tensor("sample", "float32", ["batch", 3, "pixel_height", "pixel_width"])],
        },
        "text_encoder": {
            "file": "text_encoder.onnx",
            "sha256": _dummy_file(directory, "text_encoder.onnx"),
            "inputs": [_tensor("input_ids", "int64", ["batch", "sequence"])],
            "outputs": [_tensor("last_hidden_state", "float32", ["batch", "sequence", 32])],
        },
        "tokenizer": {
            "file": "tokenizer.json",
            "sha256": _dummy_file(directory, "tokenizer.json"),
            "model_max_length": TEXT_MAX_TOKENS,
            "pad_token_id": 1,
        },
        "schedule": {
            "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": "epsilon",
        },
        "sampling": {
            "samplers": ["dpmpp_2m", "ddim", "euler_ancestral", "ddpm"],
            "default_sampler": "dpmpp_2m",
            "default_steps": 20,
            "min_steps": 1,
            "max_steps": 1000,
            "default_guidance_scale": 7.5,
            "max_guidance_scale": 20.0,
        },
    }


def text_model_store(root: Path) -> Path:
    """``root`` as a store holding the MNIST model and the dummy text-to-image model."""
    shutil.copytree(ROOT / "model_store" / MNIST, root / MNIST)
    directory = root / TEXT_MODEL / "1"
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps(text_manifest(directory), indent=2))
    return root


def add_class_model_copy(root: Path, name: str) -> None:
    """The MNIST model's files as model ``name`` in the store at ``root`` (real: workers serve it)."""
    directory = root / name / "1"
    shutil.copytree(ROOT / "model_store" / MNIST / "1", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "name": name}, indent=2))
