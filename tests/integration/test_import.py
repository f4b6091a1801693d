"""`make import` on tiny random pipelines: the entry, its files, and ONNX against torch.

The pipelines come from ``tooling.tiny_pipelines`` (random weights, built from configs). Each
is imported once per module; the checks here are made independently of the importer's own.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_store.manifest import sha256_file
from model_store.store import ModelStore, StoredModel
from tooling.importer import ImportOptions, ImportRefused, import_pipeline
from tooling.importer.__main__ import main as importer_main
from tooling.importer.tokenizer import CHECK_PROMPTS
from tooling.tiny_pipelines import build_tiny_dit, build_tiny_sd

SIZES = [(32, 32), (48, 32)]  # native (8x8 latent at factor 4) and a wider one


@pytest.fixture(scope="module")
def sd_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("src") / "tiny-sd", seed=1)


@pytest.fixture(scope="module")
def dit_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dit(tmp_path_factory.mktemp("src") / "tiny-dit", seed=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def sd(sd_src: Path, store: Path) -> StoredModel:
    import_pipeline(sd_src, "tiny-sd", "1", store, ImportOptions(sizes=SIZES, default_steps=8))
    return ModelStore(store).get("tiny-sd")


@pytest.fixture(scope="module")
def dit(dit_src: Path, store: Path) -> StoredModel:
    import_pipeline(dit_src, "tiny-dit", "1", store)
    return ModelStore(store).get("tiny-dit")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _entries(store: Path) -> list[str]:
    """Everything in the store root (staging folders included)."""
    return sorted(p.name for p in store.iterdir()) if store.exists() else []


def test_tiny_pipelines_are_not_trivially_zero(sd_src: Path, dit_src: Path) -> None:
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad():
        unet: Any = UNet2DConditionModel.from_pretrained(sd_src / "unet")
        hidden = CLIPTextModel.from_pretrained(sd_src / "text_encoder")(
            torch.tensor([[586, 320, 587]])
        ).last_hidden_state
        out = unet(
            x, torch.tensor([10.0, 900.0]), encoder_hidden_states=torch.randn(2, 16, 32, generator=g)
        ).sample
        dit: Any = DiTTransformer2DModel.from_pretrained(dit_src / "transformer")
        noise = dit(x, timestep=torch.tensor([10.0, 900.0]), class_labels=torch.tensor([1, 1000])).sample
        vae: Any = AutoencoderKL.from_pretrained(sd_src / "vae")
        image = vae.decode(x / 0.18215).sample
    assert noise.shape == (2, 8, 8, 8)  # learned sigma: noise and variance halves
    for name, t in [
        ("text", hidden),
        ("unet", out),
        ("dit eps", noise[:, :4]),
        ("dit var", noise[:, 4:]),
        ("vae", image),
    ]:
        assert float(t.std()) > 0.1, name
    assert not torch.allclose(out[0], out[1])  # the timestep and condition matter


def test_sd_entry_is_valid_and_hashed(sd: StoredModel, sd_src: Path) -> None:
    m = sd.manifest
    assert m.kind == "text-to-image" and m.file == "unet.onnx"
    assert [i.name for i in m.inputs] == ["sample", "timestep", "encoder_hidden_states"]
    assert m.inputs[0].shape == ["batch", 4, "height", "width"] and m.inputs[1].shape == ["batch"]
    assert m.outputs[0].name == "model_output"
    assert m.image_shape == (3, 32, 32) and m.served_sizes == SIZES
    assert m.latent is not None and (m.latent.channels, m.latent.factor, m.latent.scaling_factor) == (
        4,
        4,
        0.18215,
    )
    assert m.sample_shape(48, 32) == (4, 8, 12)
    assert m.text_encoder is not None and m.vae_decoder is not None and m.tokenizer is not None
    assert (m.text_encoder.inputs[0].name, m.text_encoder.outputs[0].name) == (
        "input_ids",
        "last_hidden_state",
    )
    assert (m.vae_decoder.inputs[0].name, m.vae_decoder.outputs[0].name) == ("latent_sample", "sample")
    assert m.tokenizer.model_max_length == 16 and m.tokenizer.pad_token_id == 587  # <|endoftext|>
    sd.verify()
    for spec in (m.text_encoder, m.vae_decoder, m.tokenizer):
        assert sha256_file(sd.directory / spec.file) == spec.sha256
    assert sorted(p.name for p in sd.directory.iterdir()) == sorted(
        ["manifest.json", "unet.onnx", "text_encoder.onnx", "vae_decoder.onnx", "tokenizer.json"]
    )
    raw = json.loads((sd_src / "scheduler" / "scheduler_config.json").read_text())
    assert m.schedule.scheduler_config == raw and m.schedule.beta_schedule == "scaled_linear"
    assert "dpmpp_2m" in m.sampling.samplers and m.sampling.default_steps == 8
    assert m.source["pipeline"] == "StableDiffusionPipeline" and m.source["timestep"] == "per-row"
    for component in ("unet", "text_encoder", "vae_decoder"):
        err = m.quality["onnx_vs_torch"][component]["max_relative_error"]  # type: ignore[index]
        assert 0 <= err < 1e-4, component


def test_sd_onnx_matches_torch_at_mixed_timesteps_and_two_sizes(sd: StoredModel, sd_src: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet: Any = UNet2DConditionModel.from_pretrained(sd_src / "unet").eval()
    vae: Any = AutoencoderKL.from_pretrained(sd_src / "vae").eval()
    den, dec = _session(sd.verify()), _session(sd.directory / "vae_decoder.onnx")
    rng = np.random.default_rng(7)
    t = np.array([999.0, 500.5, 3.0], np.float32)  # each row at its own step
    for w, h in [(8, 8), (12, 8)]:
        x = rng.standard_normal((3, 4, h, w)).astype(np.float32)
        ctx = rng.standard_normal((3, 16, 32)).astype(np.float32)
        (got,) = den.run(None, {"sample": x, "timestep": t, "encoder_hidden_states": ctx})
        with torch.no_grad():
            want = unet(
                torch.from_numpy(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx)
            ).sample
        assert got.shape == (3, 4, h, w) and _rel_err(got, want.numpy()) < 1e-4
        for i in range(3):  # a row's output does not depend on the other rows' timesteps
            (alone,) = den.run(
                None,
                {"sample": x[i : i + 1], "timestep": t[i : i + 1], "encoder_hidden_states": ctx[i : i + 1]},
            )
            np.testing.assert_allclose(got[i : i + 1], alone, rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # and the timestep matters: row 0 at row 2's step differs
            other = unet(
                torch.from_numpy(x[:1]), torch.tensor([3.0]), encoder_hidden_states=torch.from_numpy(ctx[:1])
            )
        assert not np.allclose(got[0], other.sample.numpy()[0], atol=1e-3)
        z = (rng.standard_normal((2, 4, h, w)) / 0.18215).astype(np.float32)
        (image,) = dec.run(None, {"latent_sample": z})
        with torch.no_grad():
            assert (
                image.shape == (2, 3, 4 * h, 4 * w)
                and _rel_err(image, vae.decode(torch.from_numpy(z)).sample.numpy()) < 1e-4
            )


def test_tokenizer_json_reproduces_the_pipeline_tokenizer(
    sd: StoredModel, sd_src: Path, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer
    from transformers import CLIPTextModel, CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(sd_src / "tokenizer")
    tok = Tokenizer.from_file(str(sd.directory / "tokenizer.json"))  # what a worker does: no transformers
    prompts = [*CHECK_PROMPTS, "a red cat, riding a horse; at night!", "Ω≈ç√ 🚀🚀 " * 5]
    for prompt in prompts:
        want = reference(prompt, padding="max_length", max_length=16, truncation=True).input_ids
        assert tok.encode(prompt).ids == want, prompt
    assert len(set(map(tuple, (tok.encode(p).ids for p in prompts)))) == len(prompts)  # not all padding
    # The exported text encoder on those ids is the torch one's last_hidden_state.
    ids = np.array([e.ids for e in tok.encode_batch(prompts[:3])], np.int64)
    (got,) = _session(sd.directory / "text_encoder.onnx").run(None, {"input_ids": ids})
    with torch.no_grad():
        want = CLIPTextModel.from_pretrained(sd_src / "text_encoder")(torch.from_numpy(ids)).last_hidden_state
    assert _rel_err(got, want.numpy()) < 1e-4

    # SD 2.x pads with "!" (id 0), not <|endoftext|>: the converted file must too.
    from tooling.importer.tokenizer import convert_tokenizer

    CLIPTokenizer.from_pretrained(sd_src / "tokenizer", pad_token="!").save_pretrained(tmp_path / "tok2")
    info = convert_tokenizer(tmp_path / "tok2", "CLIPTokenizer", tmp_path / "tokenizer.json")
    assert info.pad_token_id == 0
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("a cat").ids[-1] == 0


def test_dit_entry_keeps_the_noise_half_of_learned_sigma(dit: StoredModel, dit_src: Path) -> None:
    from diffusers import DiTTransformer2DModel

    m = dit.manifest
    assert m.kind == "class-conditional" and m.file == "transformer.onnx"
    assert [i.name for i in m.inputs] == ["sample", "timestep", "class_label"]
    assert m.inputs[2].dtype == "int64" and m.inputs[1].shape == ["batch"]
    assert m.outputs[0].shape == ["batch", 4, 8, 8]  # 4 of the transformer's 8 channels
    assert len(m.classes) == 1000 and m.null_class == 1000 and m.classes[3] == "class 3"
    assert m.text_encoder is None and m.tokenizer is None and m.served_sizes == [(32, 32)]
    transformer: Any = DiTTransformer2DModel.from_pretrained(dit_src / "transformer").eval()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    t, y = np.array([980.0, 10.25, 400.0], np.float32), np.array([5, 1000, 17], np.int64)
    (got,) = _session(dit.verify()).run(None, {"sample": x, "timestep": t, "class_label": y})
    with torch.no_grad():
        full = transformer(
            torch.from_numpy(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)
        ).sample
    assert _rel_err(got, full[:, :4].numpy()) < 1e-4
    sha = m.vae_decoder.sha256 if m.vae_decoder else ""
    assert sha256_file(dit.directory / "vae_decoder.onnx") == sha


def _copy_src(src: Path, dest: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dest)
    edit(dest)
    return dest


def _edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("field", "edit", "options"),
    [
        (
            "unet",
            lambda d: _edit_json(d / "model_index.json", unet=["diffusers", "UNet3DConditionModel"]),
            {},
        ),
        (
            "_class_name",
            lambda d: _edit_json(d / "model_index.json", _class_name="StableDiffusionXLPipeline"),
            {},
        ),
        (
            "safety_checker",
            lambda d: _edit_json(
                d / "model_index.json", safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"]
            ),
            {},
        ),
        (
            "controlnet",
            lambda d: _edit_json(d / "model_index.json", controlnet=["diffusers", "ControlNetModel"]),
            {},
        ),
        (
            "scheduler.timestep_spacing",
            lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", timestep_spacing="karras-ish"),
            {},
        ),
        (
            "scheduler._class_name",
            lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", _class_name="MyScheduler"),
            {},
        ),
        ("unet.in_channels", lambda d: _edit_json(d / "unet" / "config.json", in_channels=9), {}),
        (
            "unet.addition_embed_type",
            lambda d: _edit_json(d / "unet" / "config.json", addition_embed_type="text_time"),
            {},
        ),
        ("sizes", lambda d: None, {"sizes": [(30, 32)]}),  # not a multiple of the VAE factor 4
        ("sizes", lambda d: None, {"sizes": [(36, 32)]}),  # a 9-wide latent: the UNet halves it once
        ("default_steps", lambda d: None, {"default_steps": 5000}),
    ],
)
def test_refusals_name_their_field(
    sd_src: Path, tmp_path: Path, field: str, edit: Callable[[Path], None], options: dict[str, Any]
) -> None:
    src = _copy_src(sd_src, tmp_path / "src", edit)
    with pytest.raises(ImportRefused) as info:
        import_pipeline(src, "refused", "1", tmp_path / "store", ImportOptions(**options))
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")
    assert _entries(tmp_path / "store") == []


def test_dit_refuses_sizes_its_graph_cannot_serve(dit_src: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ImportRefused, match=r"^sizes: 64x64: DiTTransformer2DModel serves only its native 32x32"
    ):
        import_pipeline(dit_src, "dit", "1", tmp_path, ImportOptions(sizes=[(64, 64)]))


def test_a_failing_import_leaves_no_entry(
    sd_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    # A refusal after the UNet is written: no tolerance is met by float arithmetic.
    with pytest.raises(ImportRefused, match=r"^unet: onnxruntime disagrees with torch"):
        import_pipeline(sd_src, "tiny", "1", store, ImportOptions(tolerance=0.0))
    assert _entries(store) == []

    # A crash midway (the VAE's export, after the UNet and text encoder are written).
    from tooling.importer import from_diffusers

    real = from_diffusers.export_graph
    written: list[str] = []

    def export_then_crash(*args: Any, **kwargs: Any) -> list[Path]:
        dest = args[-1]
        if dest.name == "vae_decoder.onnx":
            written.extend(sorted(p.name for p in dest.parent.iterdir()))
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(from_diffusers, "export_graph", export_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        import_pipeline(sd_src, "tiny", "1", store)
    assert {"unet.onnx", "text_encoder.onnx", "tokenizer.json"} <= set(written)
    assert _entries(store) == []
    assert ModelStore(store).models() == []


def test_cli_imports_and_refuses_an_existing_version(
    dit_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(dit_src), "--name", "cli-dit", "--store", str(tmp_path), "--default-steps", "4"]
    importer_main(args)
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cli-dit' / '1'}" in out and "transformer: max error vs torch" in out
    assert ModelStore(tmp_path).get("cli-dit").manifest.sampling.default_steps == 4
    with pytest.raises(SystemExit) as exit_info:
        importer_main(args)
    assert exit_info.value.code == 2 and "refused: version: " in capsys.readouterr().err


class _SharedTimestepUNet(torch.nn.Module):
    """Optimum's UNet graph: one scalar timestep for the whole batch, output ``out_sample``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=hidden).sample


class _Int32TextEncoder(torch.nn.Module):
    """A text encoder taking int32 ids and returning (last_hidden_state, pooler_output)."""

    def __init__(self, text_encoder: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids.long())
        return out.last_hidden_state, out.pooler_output


class _Decoder(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample).sample


def _optimum_like(src: Path, out: Path, *, dynamic_batch: bool = True) -> Path:
    """A folder laid out as ``optimum-cli export onnx --task text-to-image`` writes it, with its
    conventions (scalar timestep, int32 ids, Optimum's output names), from a diffusers folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    out.mkdir()
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(src / part, out / part)
    shutil.copy(src / "model_index.json", out / "model_index.json")
    batch = "batch_size"
    exports: list[
        tuple[str, str, torch.nn.Module, tuple[torch.Tensor, ...], list[str], list[str], dict[str, Any]]
    ] = [
        (
            "unet",
            "unet",
            _SharedTimestepUNet(UNet2DConditionModel.from_pretrained(src / "unet").eval()),
            (torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.randn(2, 16, 32)),
            ["sample", "timestep", "encoder_hidden_states"],
            ["out_sample"],
            {
                "sample": {0: batch, 2: "height", 3: "width"},
                "encoder_hidden_states": {0: batch, 1: "sequence_length"},
                "out_sample": {0: batch, 2: "height", 3: "width"},
            }
            if dynamic_batch
            else {},
        ),
        (
            "text_encoder",
            "text_encoder",
            _Int32TextEncoder(CLIPTextModel.from_pretrained(src / "text_encoder").eval()),
            (torch.randint(0, 500, (2, 16), dtype=torch.int32),),
            ["input_ids"],
            ["last_hidden_state", "pooler_output"],
            {"input_ids": {0: batch}, "last_hidden_state": {0: batch}, "pooler_output": {0: batch}},
        ),
        (
            "vae_decoder",
            "vae",
            _Decoder(AutoencoderKL.from_pretrained(src / "vae").eval()),
            (torch.randn(1, 4, 8, 8),),
            ["latent_sample"],
            ["sample"],
            {"latent_sample": {0: batch, 2: "h", 3: "w"}, "sample": {0: batch, 2: "H", 3: "W"}},
        ),
    ]
    for folder, config_from, module, example, inputs, outputs, axes in exports:
        (out / folder).mkdir()
        shutil.copy(src / config_from / "config.json", out / folder / "config.json")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings
            torch.onnx.export(
                module,
                example,
                str(out / folder / "model.onnx"),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    return out


def test_optimum_export_is_copied_with_its_own_names(sd_src: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    src = _optimum_like(sd_src, tmp_path / "optimum")
    result = import_pipeline(src, "tiny-sd-onnx", "1", tmp_path / "store")
    stored = ModelStore(tmp_path / "store").get("tiny-sd-onnx")
    m = stored.manifest
    assert result.manifest == m and m.source["layout"] == "optimum" and m.source["timestep"] == "per-row"
    assert "timestep_rewritten" in m.source  # the export's scalar timestep now takes one per row
    assert [(i.name, i.shape) for i in m.inputs] == [
        ("sample", ["batch_size", 4, "height", "width"]),
        ("timestep", ["batch_size"]),
        ("encoder_hidden_states", ["batch_size", "sequence_length", 32]),
    ]
    assert m.outputs[0].name == "out_sample"
    assert m.text_encoder is not None and m.text_encoder.inputs[0].dtype == "int64"  # widened from int32
    assert [o.name for o in m.text_encoder.outputs] == ["last_hidden_state", "pooler_output"]
    assert m.source["int32_inputs_widened"] == {"text_encoder": ["input_ids"]}
    assert m.quality["onnx_vs_torch"]["unet"] == {
        "compared_with_torch": False,
        "cases": [  # type: ignore[index]
            "batch 1 at 8x8 latent",
            "batch 3 at 8x8 latent",
        ],
    }
    stored.verify()
    # The rewritten UNet computes what torch does, each row at its own timestep.
    x, ctx = np.ones((2, 4, 8, 8), np.float32), np.full((2, 16, 32), 0.5, np.float32)
    ts = np.array([250.0, 900.0], np.float32)
    (got,) = _session(stored.path).run(None, {"sample": x, "timestep": ts, "encoder_hidden_states": ctx})
    with torch.no_grad():
        unet: Any = UNet2DConditionModel.from_pretrained(sd_src / "unet").eval()
        want = unet(
            torch.from_numpy(x), torch.from_numpy(ts), encoder_hidden_states=torch.from_numpy(ctx)
        ).sample.numpy()
    assert _rel_err(got, want) < 1e-4
    assert _rel_err(got[0], got[1]) > 1e-3  # the rows' timesteps matter
    ids = np.array([[586, 320, 587] + [587] * 13], np.int64)
    (hidden, _) = _session(stored.directory / "text_encoder.onnx").run(None, {"input_ids": ids})
    assert hidden.shape == (1, 16, 32)


def test_optimum_export_with_a_fixed_batch_axis_is_refused(sd_src: Path, tmp_path: Path) -> None:
    src = _optimum_like(sd_src, tmp_path / "optimum", dynamic_batch=False)
    with pytest.raises(ImportRefused, match=r"^unet\.sample: fixed batch axis 2") as info:
        import_pipeline(src, "fixed", "1", tmp_path / "store")
    assert info.value.field == "unet.sample" and _entries(tmp_path / "store") == []
