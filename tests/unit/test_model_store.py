"""Manifest validation, checksum refusal and path containment (no model run needed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from model_store.manifest import sha256_file
from model_store.store import ChecksumMismatch, ModelStore, ModelStoreError, read_manifest

SHIPPED = ModelStore().get("mnist-cfg-unet")


@pytest.fixture
def store_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped model's version directory."""
    dst = tmp_path / SHIPPED.manifest.name / SHIPPED.manifest.version
    shutil.copytree(SHIPPED.directory, dst)
    return dst


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_shipped_model_loads_and_verifies() -> None:
    m = SHIPPED.manifest
    assert SHIPPED.verify() == SHIPPED.path
    assert sha256_file(SHIPPED.path) == m.sha256
    assert m.image_shape == (1, 28, 28)
    assert m.classes == [str(i) for i in range(10)] and m.null_class == 10
    assert m.schedule.num_train_timesteps == 1000
    assert m.sampling.default_sampler in m.sampling.samplers
    assert [s.name for s in m.inputs] == ["sample", "timestep", "class_label"]


def test_checksum_mismatch_is_refused(store_copy: Path) -> None:
    with (store_copy / "model.onnx").open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    stored = ModelStore(store_copy.parents[1]).get(SHIPPED.manifest.name)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        stored.verify()


def test_missing_model_file_is_a_clear_error(store_copy: Path) -> None:
    (store_copy / "model.onnx").unlink()
    with pytest.raises(ModelStoreError, match="missing"):
        read_manifest(store_copy).verify()


@pytest.mark.parametrize("bad", ["../../evil.onnx", "/etc/passwd", "sub/model.onnx", ".hidden"])
def test_model_path_cannot_escape_the_store(store_copy: Path, bad: str) -> None:
    edit_manifest(store_copy, file=bad)
    with pytest.raises(ModelStoreError):
        read_manifest(store_copy).verify()


def test_symlink_out_of_the_store_is_refused(store_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copy(store_copy / "model.onnx", outside)
    (store_copy / "model.onnx").unlink()
    (store_copy / "model.onnx").symlink_to(outside)
    with pytest.raises(ModelStoreError, match="escapes"):
        read_manifest(store_copy).verify()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unknown_field": 1}, "unknown_field"),
        ({"null_class": 3}, "null_class"),
        ({"sha256": "not-a-hash"}, "sha256"),
        ({"opset": 11}, "opset"),
        ({"name": "other-model"}, "lives in"),
    ],
)
def test_invalid_manifests_are_rejected(store_copy: Path, changes: dict, message: str) -> None:
    edit_manifest(store_copy, **changes)
    with pytest.raises(ModelStoreError, match=message):
        read_manifest(store_copy)


def test_unknown_model_or_version() -> None:
    with pytest.raises(ModelStoreError, match="not found"):
        ModelStore().get("no-such-model")
    with pytest.raises(ModelStoreError, match="not found"):
        ModelStore().get(SHIPPED.manifest.name, "999")


def test_shipped_fp16_variant_verifies() -> None:
    m = SHIPPED.manifest
    assert m.variant_names == ["fp32", "fp16"]
    path = SHIPPED.verify("fp16")
    assert path.name == m.variants["fp16"].file and sha256_file(path) == m.variants["fp16"].sha256


def test_variant_checksum_and_name_are_checked(store_copy: Path) -> None:
    with (store_copy / "model.fp16.onnx").open("r+b") as f:
        f.seek(500)
        byte = f.read(1)
        f.seek(500)
        f.write(bytes([byte[0] ^ 0xFF]))
    stored = read_manifest(store_copy)
    assert stored.verify() == stored.path  # the fp32 file is untouched
    with pytest.raises(ChecksumMismatch, match=r"model\.fp16\.onnx"):
        stored.verify("fp16")
    with pytest.raises(ModelStoreError, match="no variant 'int8'"):
        stored.verify("int8")


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("fp32", "manifest's own file"),
        ("FP16!", "variant name"),
    ],
)
def test_invalid_variant_names_are_rejected(store_copy: Path, variant: str, message: str) -> None:
    spec = SHIPPED.manifest.variants["fp16"].model_dump()
    edit_manifest(store_copy, variants={variant: spec})
    with pytest.raises(ModelStoreError, match=message):
        read_manifest(store_copy)


def test_a_variant_cannot_share_the_base_file(store_copy: Path) -> None:
    spec = {**SHIPPED.manifest.variants["fp16"].model_dump(), "file": "model.onnx"}
    edit_manifest(store_copy, variants={"fp16": spec})
    with pytest.raises(ModelStoreError, match="its own file"):
        read_manifest(store_copy)


def test_verify_all_checks_every_file_a_pipeline_runs_from(tmp_path: Path) -> None:
    from tests.stores import TEXT_MODEL, text_model_store

    root = text_model_store(tmp_path)
    stored = ModelStore(root).get(TEXT_MODEL)
    assert stored.verify_all() == stored.path
    for name in ("tokenizer.json", "text_encoder.onnx", "vae_decoder.onnx"):
        original = (stored.directory / name).read_bytes()
        (stored.directory / name).write_bytes(original + b"tampered")
        with pytest.raises(ChecksumMismatch, match=re.escape(name)):
            stored.verify_all()
        (stored.directory / name).write_bytes(original)
    # External weights are named in the manifest and checked too.
    manifest = json.loads((stored.directory / "manifest.json").read_text())
    manifest["external_data"] = {"unet.onnx.data": "0" * 64}
    (stored.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match=r"unet\.onnx\.data"):
        ModelStore(root).get(TEXT_MODEL).verify_all()
    manifest["external_data"] = {"../escape.data": "0" * 64}
    (stored.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="external_data"):
        ModelStore(root).get(TEXT_MODEL)
