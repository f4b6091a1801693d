"""The importer's pure parts: sizes, model_index.json checks, geometry, the atomic store entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tooling.importer.errors import ImportRefused
from tooling.importer.geometry import dit_geometry, unet_geometry
from tooling.importer.layout import read_layout
from tooling.importer.onnx_files import check_dynamic_batch
from tooling.importer.sizes import check_sizes, parse_sizes
from tooling.importer.store_entry import staged_entry

SD_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}
UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 8,
    "cross_attention_dim": 32,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
}
VAE = {"latent_channels": 4, "block_out_channels": [16, 32, 32], "scaling_factor": 0.18215}


def _index(tmp_path: Path, **changes: Any) -> Path:
    (tmp_path / "model_index.json").write_text(json.dumps({**SD_INDEX, **changes}))
    return tmp_path


def _refused(field: str) -> Any:
    return pytest.raises(ImportRefused, match=rf"^{field.replace('.', '[.]')}: ")


def test_parse_sizes() -> None:
    assert parse_sizes("64x64, 96X64,64x64") == [(64, 64), (96, 64)]
    for bad in ("64", "64x", "ax64", "0x64", ""):
        with _refused("sizes"):
            parse_sizes(bad)


def test_check_sizes_refuses_odd_latents() -> None:
    assert check_sizes([(32, 32), (48, 32)], factor=4, latent_multiple=2, denoiser="u") == [
        (32, 32),
        (48, 32),
    ]
    with _refused("sizes"):
        check_sizes([(34, 32)], factor=4, latent_multiple=2, denoiser="u")  # not a multiple of 4
    with pytest.raises(ImportRefused, match="gives a 9x8 latent"):
        check_sizes([(36, 32)], factor=4, latent_multiple=2, denoiser="u")
    with pytest.raises(ImportRefused, match="serves only its native 32x32"):
        check_sizes([(64, 64)], factor=4, latent_multiple=2, denoiser="dit", fixed_latent=(8, 8))


def test_layout_accepts_sd_and_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    layout = read_layout(_index(tmp_path))
    assert (layout.kind, layout.layout, layout.denoiser) == ("text-to-image", "diffusers", "unet")
    assert "safety_checker" not in layout.components
    with _refused("model_index.json"):
        read_layout(tmp_path / "nowhere")
    cases = {
        "_class_name": {"_class_name": "KandinskyPipeline"},
        "vae": {"vae": ["diffusers", "VQModel"]},
        "tokenizer": {"tokenizer": ["transformers", "T5Tokenizer"]},
        "text_encoder": {"text_encoder": [None, None]},
        "safety_checker": {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"]},
        "adapter": {"adapter": ["diffusers", "T2IAdapter"]},
    }
    for field, change in cases.items():
        with _refused(field):
            read_layout(_index(tmp_path, **change))
    dropped = read_layout(
        _index(
            tmp_path,
            safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
            feature_extractor=["transformers", "CLIPImageProcessor"],
        ),
        drop_safety_checker=True,
    )
    assert dropped.dropped == ["feature_extractor", "safety_checker"]


def test_geometry() -> None:
    g = unet_geometry(UNET, VAE, 32)
    assert (g.factor, g.latent_multiple, g.native, g.fixed_latent) == (4, 4, (32, 32), False)
    assert unet_geometry({**UNET, "sample_size": [8, 12]}, VAE, 32).native == (48, 32)  # (height, width)
    for field, unet, vae in [
        ("unet.in_channels", {**UNET, "in_channels": 9}, VAE),
        ("unet.class_embed_type", {**UNET, "class_embed_type": "timestep"}, VAE),
        ("unet.cross_attention_dim", {**UNET, "cross_attention_dim": 768}, VAE),
        ("vae.latents_mean", UNET, {**VAE, "latents_mean": [0.0] * 4}),
    ]:
        with _refused(field):
            unet_geometry(unet, vae, 32)
    dit = {"in_channels": 4, "out_channels": 8, "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 10}
    d = dit_geometry(dit, VAE)
    assert (d.learned_sigma, d.fixed_latent, d.latent_multiple) == (True, True, 2)
    with _refused("transformer.out_channels"):
        dit_geometry({**dit, "out_channels": 6}, VAE)
    with _refused("transformer.norm_type"):
        dit_geometry({**dit, "norm_type": "layer_norm"}, VAE)


def test_fixed_batch_axis_is_refused() -> None:
    check_dynamic_batch([{"name": "sample", "shape": ["batch", 4, 8, 8]}, {"name": "t", "shape": []}], "unet")
    with pytest.raises(ImportRefused, match=r"^unet\.sample: fixed batch axis 1"):
        check_dynamic_batch([{"name": "sample", "shape": [1, 4, 8, 8]}], "unet")


def test_staged_entry_is_atomic(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_entry(tmp_path, "m", "1") as staging:
        (staging / "manifest.json").write_text("{}")
        raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []
    with staged_entry(tmp_path, "m", "1") as staging:
        (staging / "a").write_text("first")
    assert (tmp_path / "m" / "1" / "a").read_text() == "first"
    with _refused("version"), staged_entry(tmp_path, "m", "1"):
        pass
    with staged_entry(tmp_path, "m", "1", overwrite=True) as staging:
        (staging / "b").write_text("second")
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with _refused("name"), staged_entry(tmp_path, "Bad Name", "1"):
        pass


def _scalar_timestep_graph(first_op: str) -> onnx.ModelProto:
    """timestep (a scalar) -> Unsqueeze or Mul -> Expand to the sample's batch -> output."""
    from onnx import TensorProto, helper, numpy_helper

    t = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [])
    x = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])
    consts = [
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    if first_op == "Unsqueeze":
        first = helper.make_node("Unsqueeze", ["timestep", "axes"], ["t1"])
    else:
        consts.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        first = helper.make_node("Mul", ["timestep", "two"], ["t1"])
    nodes = [
        first,
        helper.make_node("Shape", ["sample"], ["shape"]),
        helper.make_node("Gather", ["shape", "axes"], ["batch"]),
        helper.make_node("Expand", ["t1", "batch"], ["tb"]),
        helper.make_node("Unsqueeze", ["tb", "one"], ["tcol"]),
        helper.make_node("Mul", ["sample", "tcol"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "g", [x, t], [y], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_scalar_timestep_graph_is_rewritten_to_take_one_per_row() -> None:
    import onnxruntime as ort

    from tooling.importer.timestep import per_row_timestep

    model = _scalar_timestep_graph("Unsqueeze")
    x = np.ones((3, 2), np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(
        None, {"sample": x, "timestep": np.array(5.0, np.float32)}
    )[0]
    assert per_row_timestep(model, "timestep", "batch")
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString())
    (after,) = sess.run(None, {"sample": x, "timestep": np.array([1.0, 2.0, 3.0], np.float32)})
    assert after.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]  # each row at its own timestep
    (same,) = sess.run(None, {"sample": x, "timestep": np.array([5.0], np.float32)})
    assert same.tolist() == before.tolist()  # one timestep for all still broadcasts


def test_a_graph_that_does_not_start_with_unsqueeze_is_left_alone() -> None:
    from tooling.importer.timestep import per_row_timestep

    model = _scalar_timestep_graph("Mul")
    before = model.SerializeToString()
    assert not per_row_timestep(model, "timestep", "batch")
    assert model.SerializeToString() == before


def test_a_text_encoder_fed_an_attention_mask_is_refused() -> None:
    from tooling.importer.geometry import check_text_encoder

    check_text_encoder({"hidden_size": 32})  # CLIP as SD ships it: ids only
    with pytest.raises(ImportRefused, match=r"^text_encoder\.use_attention_mask"):
        check_text_encoder({"use_attention_mask": True})
