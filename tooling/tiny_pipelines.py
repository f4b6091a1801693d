"""Tiny random diffusers pipelines, built from configs (no hub access), for import tests.

``build_tiny_sd`` writes a ``StableDiffusionPipeline`` (UNet2DConditionModel + CLIPTextModel +
CLIPTokenizer + AutoencoderKL) and ``build_tiny_dit`` a ``DiTPipeline`` (DiTTransformer2DModel
with learned sigma + AutoencoderKL), each with ``save_pretrained``, the layout the hub uses. The
models are small enough that exporting and checking them takes seconds on two CPU cores.

Every parameter is re-drawn from a seeded normal: diffusers zero-initialises some output layers,
and a model whose output is exactly zero would let a broken export pass its checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# SD 1.5's scheduler config (the hub's `scheduler/scheduler_config.json`, less version keys).
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# DiT-XL-2's scheduler on the hub is DDIM with a linear schedule; steps_offset 0 and
# set_alpha_to_one False keep the final step the plain formula.
DIT_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "trained_betas": None,
}

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words whose merges the tiny vocabulary learns, so common prompts tokenize to multi-char tokens.
_WORDS = (
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "astronaut",
    "riding",
    "horse",
    "on",
    "moon",
    "red",
    "blue",
    "green",
    "painting",
    "portrait",
    "in",
    "style",
    "an",
    "with",
    "and",
    "city",
    "at",
    "night",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_clip_vocab(words: Sequence[str] = _WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary and merges: every byte character with and without ``</w>``,
    left-to-right merges spelling ``words`` (so each is one token), then the two special tokens
    (as CLIP orders them)."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
                tokens.append(left + right)
            left += right
    tokens = [*dict.fromkeys(tokens), BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path, words: Sequence[str] = _WORDS) -> tuple[Path, Path]:
    """``vocab.json`` and ``merges.txt`` of ``tiny_clip_vocab(words)`` in ``folder``."""
    vocab, merges = tiny_clip_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def reinit_(module: torch.nn.Module, seed: int, std: float = 1.0) -> None:
    """Re-draw every parameter from a seeded normal: matrices and kernels with std/sqrt(fan_in)
    (activations stay O(1) through the depth), norm scales near 1, biases near 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(noise * (std / fan_in**0.5))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def _tiny_vae(seed: int, factor: int) -> Any:
    from diffusers import AutoencoderKL

    levels = {1: 1, 2: 2, 4: 3, 8: 4}[factor]
    vae: Any = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(16, 32, 32, 32)[:levels],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    )
    reinit_(vae, seed + 1)
    return vae.eval()


def build_tiny_sd(
    out: Path,
    seed: int = 0,
    *,
    prediction_type: str = "epsilon",
    scheduler_config: dict[str, Any] | None = None,
    sample_size: int = 8,
    vae_factor: int = 4,
    model_max_length: int = 16,
    pad_token: str = EOS,
    sd2_layout: bool = False,
) -> Path:
    """Write a tiny random ``StableDiffusionPipeline`` to ``out`` and return ``out``.

    Latents are 4 x ``sample_size``², images ``sample_size * vae_factor`` px square (32 by
    default). ``sd2_layout`` switches to SD 2.x's linear attention projections and per-block head
    dims; ``pad_token`` "!" pads as SD 2.x's tokenizer does. ``scheduler_config`` replaces SD 1.5's
    scheduler config (``prediction_type`` is set on whichever is used).
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers import SchedulerMixin
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab, _ = tiny_clip_vocab()
    # Built the way a hub folder is read: from vocab.json and merges.txt.
    tokenizer = CLIPTokenizer.from_pretrained(
        write_tokenizer_files(out / "tokenizer")[0].parent,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=model_max_length,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config)
    reinit_(text_encoder, seed + 2)
    unet: Any = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=(4, 8) if sd2_layout else 8,
        use_linear_projection=sd2_layout,
        norm_num_groups=16,
    )
    reinit_(unet, seed + 3)
    sched_cfg = dict(scheduler_config if scheduler_config is not None else SD15_SCHEDULER)
    sched_cfg["prediction_type"] = prediction_type
    scheduler = _scheduler_from_config(sched_cfg)
    assert isinstance(scheduler, SchedulerMixin)
    pipe: Any = StableDiffusionPipeline(
        vae=_tiny_vae(seed, vae_factor),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # Hub folders of SD 1.x/2.x ship vocab.json + merges.txt and no tokenizer.json: so do we.
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return out


def build_tiny_dit(
    out: Path,
    seed: int = 0,
    *,
    scheduler_config: dict[str, Any] | None = None,
    sample_size: int = 8,
    vae_factor: int = 4,
    num_classes: int = 1000,
    learned_sigma: bool = True,
    id2label: dict[int, str] | None = None,
) -> Path:
    """Write a tiny random ``DiTPipeline`` to ``out`` and return ``out``.

    The transformer works on 4 x ``sample_size``² latents with 2x2 patches; with ``learned_sigma``
    it outputs 8 channels (noise then variance), as DiT-XL-2 does. ``num_classes`` defaults to
    ImageNet's 1000 because diffusers' DiTPipeline hard-codes 1000 as its null class (the label
    table is only 1001 x 32 here). ``id2label`` goes into model_index.json as on the hub
    (default: "class 0", ...).
    """
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer: Any = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8 if learned_sigma else 4,
        num_layers=2,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    reinit_(transformer, seed + 3)
    scheduler = _scheduler_from_config(
        dict(scheduler_config if scheduler_config is not None else DIT_SCHEDULER)
    )
    pipe: Any = DiTPipeline(
        transformer=transformer.eval(), vae=_tiny_vae(seed, vae_factor), scheduler=scheduler
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # DiTPipeline does not save id2label itself; the hub's DiT folders carry it in model_index.json.
    labels = id2label if id2label is not None else {i: f"class {i}" for i in range(num_classes)}
    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text())
    index["id2label"] = {str(k): v for k, v in labels.items()}
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    return out


def _scheduler_from_config(cfg: dict[str, Any]) -> Any:
    import diffusers

    cls = getattr(diffusers, str(cfg.get("_class_name", "PNDMScheduler")))
    return cls.from_config({k: v for k, v in cfg.items() if k != "_class_name"})
