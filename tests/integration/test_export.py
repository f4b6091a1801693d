"""Train a tiny model for a few steps, export it, and check onnxruntime against torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_store.store import ModelStore
from sampling.schedule import ScheduleConfig
from tooling.training.export import export
from tooling.training.half import MAX_RELATIVE_ERROR, export_fp16
from tooling.training.train import TrainConfig, train
from tooling.training.unet import UNetConfig
from workers.engine import Engine


def test_smoke_train_export_and_load(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    ck = train(
        TrainConfig(steps=4, batch_size=8, subset=64, seed=3),
        UNetConfig(base_channels=16, emb_dim=32, groups=4),
        ScheduleConfig(),
        checkpoint,
        progress=False,
    )
    assert np.isfinite(ck["training"]["final_loss"])
    out = tmp_path / "store" / "tiny" / "1"
    manifest, err = export(checkpoint, out, "tiny", "1")
    assert err < 1e-4
    assert json.loads((out / "manifest.json").read_text())["sha256"] == manifest.sha256

    stored = ModelStore(tmp_path / "store").get("tiny")
    engine = Engine(stored.verify(), stored.manifest)
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert engine.run(x, np.array([3.5, 999.0], np.float32), np.array([1, 10])).shape == (2, 1, 28, 28)

    # The fp16 variant: written beside, listed in the manifest, checked against fp32, loadable.
    spec = export_fp16(stored)
    assert spec.file == "model.fp16.onnx" and spec.compute_dtype == "float16"
    assert 0 < spec.max_relative_error <= MAX_RELATIVE_ERROR
    again = ModelStore(tmp_path / "store").get("tiny")
    assert again.manifest.variants["fp16"] == spec and again.manifest.variant_names == ["fp32", "fp16"]
    half = Engine(again.verify("fp16"), again.manifest)
    out16 = half.run(x, np.array([3.5, 999.0], np.float32), np.array([1, 10]))
    assert out16.dtype == np.float32 and out16.shape == (2, 1, 28, 28)
    assert export_fp16(again).sha256 == spec.sha256  # the conversion is deterministic


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=3, batch_size=8, subset=32, seed=5)
    unet = UNetConfig(base_channels=16, emb_dim=32, groups=4)
    a = train(cfg, unet, ScheduleConfig(), tmp_path / "a.pt", progress=False)
    b = train(cfg, unet, ScheduleConfig(), tmp_path / "b.pt", progress=False)
    for k, v in a["state_dict"].items():
        assert v.equal(b["state_dict"][k]), k
