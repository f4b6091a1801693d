"""`make eval-text`: how well the shapes text-to-image model follows prompts.

Prompts come from the caption sampler with a fixed seed (shape and color always stated, the
other attributes as often as in training): held-in prompts (color-shape pairs seen in
training) and held-out ones (pairs never seen). Images are drawn in-process through the
worker's own stages (tokenizer, ONNX text encoder, engine, samplers, VAE decoder), then read by
the attribute classifier trained on the renderer. Writes the table, the sample grids and the
manifest's ``quality.prompt_adherence``; rows are cached by the model files' sha256 (sampling is
deterministic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_store.manifest import MANIFEST_NAME, Manifest
from model_store.store import ModelStore, StoredModel, read_manifest
from sampling.denoise import Condition, sample_to_completion, start_row
from sampling.registry import get_plan
from tooling.evaluation.adherence import adherence, percent
from tooling.evaluation.run import EvalConfig
from tooling.evaluation.shapes_classifier import predict, render_accuracy, train_classifier
from tooling.shapes.attributes import (
    ATTRIBUTE_NAMES,
    BACKGROUNDS,
    COLORS,
    HELD_OUT,
    JITTER,
    POSITIONS,
    SIZES,
    VOCABULARIES,
    Attributes,
)
from tooling.shapes.captions import caption
from tooling.shapes.dataset import draw_attributes, draw_sample
from workers.engine import Engine, EngineOptions
from workers.main import load_stages
from workers.pipeline import Decoder, TextEncoder


class Drawer:
    """Prompts to uint8 images through the worker's stages; image i uses seed ``seed + i``."""

    def __init__(self, stored: StoredModel) -> None:
        stored.verify_all()
        self.manifest = stored.manifest
        self.engine = Engine(stored.verify(), stored.manifest)
        encoder, decoder = load_stages(stored, EngineOptions())
        assert encoder is not None
        self.encoder: TextEncoder = encoder
        self.decoder: Decoder = decoder

    def draw(self, prompts: list[str], config: EvalConfig, seed: int, chunk: int = 200) -> np.ndarray:
        m = self.manifest
        plan = get_plan(m.schedule.to_config(), config.sampler, config.steps)
        shape = m.sample_shape(m.image.width, m.image.height)
        (empty,) = self.encoder.encode([""])
        out: list[np.ndarray] = []
        for start in range(0, len(prompts), chunk):
            batch = prompts[start : start + chunk]
            rows = [
                start_row(plan, seed + start + i, Condition.for_text(e, empty), config.guidance_scale, shape)
                for i, e in enumerate(self.encoder.encode(batch))
            ]
            latents = sample_to_completion(rows, self.engine.run, m.schedule.prediction_type)
            out.extend(self.decoder.pixels(latents))
        return np.stack(out)


def vae_round_trip(pipeline: Path, drawer: Drawer, classifier: Any, n: int = 1000) -> dict[str, float | None]:
    """The VAE's ceiling: fresh renders through the trained encoder (torch) and the served ONNX
    decoder, read by the classifier. No sampler can do better than what the decoder can draw."""
    import torch
    from diffusers import AutoencoderKL

    from tooling.shapes.dataset import draw_any_images
    from tooling.shapes.render import to_unit

    vae: Any = AutoencoderKL.from_pretrained(pipeline / "vae").eval()
    attrs, images = draw_any_images(np.random.default_rng(99), n)
    with torch.no_grad():
        z = vae.encode(torch.from_numpy(to_unit(images))).latent_dist.mean * vae.config.scaling_factor
    pixels = np.stack(drawer.decoder.pixels(list(z.numpy())))
    return adherence([x.as_dict() for x in attrs], predict(classifier, pixels))


def eval_prompts(n: int, held_out: bool, seed: int) -> tuple[list[str], list[dict[str, str]]]:
    """``n`` prompts and the attributes each states."""
    rng = np.random.default_rng(seed)
    samples = [draw_sample(rng, held_out=held_out, always=("shape", "color")) for _ in range(n)]
    return [s.caption for s in samples], [
        {k: v for k, v in s.attributes.as_dict().items() if k in s.stated} for s in samples
    ]


def configs(guidance: float) -> list[EvalConfig]:
    rows = [EvalConfig("ddpm", 1000, g) for g in (1.0, guidance)]
    for sampler in ("dpmpp_2m", "euler"):
        rows += [EvalConfig(sampler, s, g) for s in (4, 8, 16) for g in (1.0, guidance)]
    return rows


def grid(images: np.ndarray, rows: int, path: Path, scale: int = 3) -> None:
    """``images`` uint8 [rows * cols, H, W, 3] as one PNG grid, one row per group."""
    cols = len(images) // rows
    h, w = images.shape[1:3]
    canvas = np.full((rows * (h + 2), cols * (w + 2), 3), 64, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        canvas[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = img
    size = (canvas.shape[1] * scale, canvas.shape[0] * scale)
    Image.fromarray(canvas).resize(size, Image.Resampling.NEAREST).save(path)


def grid_prompts(name: str, cols: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts stating only attribute ``name`` (plus the shape noun), one row per value."""
    rng = np.random.default_rng(seed)
    prompts, values = [], []
    for value in VOCABULARIES[name]:
        for _ in range(cols):
            while True:
                a = draw_attributes(rng).as_dict()
                a[name] = value
                try:
                    attrs = Attributes(**a)
                except ValueError:
                    continue
                if not attrs.held_out:
                    break
            prompts.append(caption(attrs, {name, "shape"} if name != "shape" else {name}, rng))
        values.append(value)
    return prompts, values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-sd")
    p.add_argument("--held-in", type=int, default=300, help="held-in prompts per configuration")
    p.add_argument("--held-out", type=int, default=150, help="held-out prompts per configuration")
    p.add_argument("--ddpm-share", type=float, default=0.34, help="share of the prompts DDPM-1000 draws")
    p.add_argument("--guidance", type=float, default=None, help="default: the manifest's default")
    p.add_argument("--cache", type=Path, default=Path("var/eval-text"))
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--pipeline",
        type=Path,
        default=Path("var/text/pipeline"),
        help="the trained pipeline folder, for the VAE round-trip ceiling (skipped when absent)",
    )
    p.add_argument(
        "--training",
        type=Path,
        default=Path("var/text/training.json"),
        help="the trainer's record, for the card",
    )
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    stored = (ModelStore(a.store) if a.store else ModelStore()).get(a.model)
    drawer = Drawer(stored)
    m = stored.manifest
    guidance = a.guidance if a.guidance is not None else m.sampling.default_guidance_scale
    classifier = train_classifier(a.cache / "attribute-classifier.pt")
    render_acc = render_accuracy(classifier)
    print("classifier on fresh renders:", json.dumps(render_acc), flush=True)

    sets = {"held-in": eval_prompts(a.held_in, False, 1), "held-out": eval_prompts(a.held_out, True, 2)}
    # Every stage decides the images: the key covers the UNet, text encoder and decoder files.
    parts = [m.sha256, *(c.sha256 for c in (m.text_encoder, m.vae_decoder) if c)]
    key = hashlib.sha256("".join(parts).encode()).hexdigest()[:16]
    cache_path = a.cache / f"results-{key}-{a.held_in}-{a.held_out}-{a.ddpm_share}.json"
    cache: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = []
    for cfg in configs(guidance):
        row = cache.get(cfg.label)
        if row is None:
            started = time.perf_counter()
            row = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance_scale": cfg.guidance_scale}
            for set_name, (prompts, requested) in sets.items():
                n = round(len(prompts) * a.ddpm_share) if cfg.sampler == "ddpm" else len(prompts)
                images = drawer.draw(prompts[:n], cfg, seed=1000)
                row[set_name] = {"images": n, **adherence(requested[:n], predict(classifier, images))}
            row["seconds"] = round(time.perf_counter() - started, 1)
            cache[cfg.label] = row
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=1))
        results.append(row)
        print(json.dumps(row), flush=True)

    grid_cfg = EvalConfig(m.sampling.default_sampler, m.sampling.default_steps, guidance)
    grids = {}
    for name in ATTRIBUTE_NAMES:
        prompts, values = grid_prompts(name, 8, seed=3)
        grid(drawer.draw(prompts, grid_cfg, seed=7), len(values), stored.directory / f"samples-{name}.png")
        grids[name] = values
    held = sorted(HELD_OUT)
    held_prompts = [f"a {c} {s}" for c, s in held for _ in range(8)]
    grid(drawer.draw(held_prompts, grid_cfg, seed=7), len(held), stored.directory / "samples-held-out.png")

    quality = {
        "classifier_render_accuracy": render_acc,
        "vae_round_trip": vae_round_trip(a.pipeline, drawer, classifier) if a.pipeline.exists() else None,
        "guidance_scale": guidance,
        "grid_config": grid_cfg.label,
        "results": results,
    }
    manifest_path = stored.directory / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data.setdefault("quality", {})["prompt_adherence"] = quality
    if a.training.exists():
        data["training"] = json.loads(a.training.read_text())
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    card = stored.directory / "README.md"
    card.write_text(render_card(read_manifest(stored.directory).manifest, quality, stored.directory))
    print(render_table(quality))
    print(f"wrote {manifest_path} and {card}")


def render_table(quality: dict) -> str:
    """The adherence table as markdown (the model card includes it)."""
    lines = [
        "| sampler | steps | guidance | images (in / out) | shape | color | background | position "
        "| size | all requested right | held-out: all right | held-out: shape | held-out: color | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in quality["results"]:
        hin, hout = r["held-in"], r["held-out"]
        cells = [percent(hin[n]) for n in ATTRIBUTE_NAMES]
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} | {hin['images']} / {hout['images']} "
            f"| {' | '.join(cells)} | **{percent(hin['all'])}** | **{percent(hout['all'])}** "
            f"| {percent(hout['shape'])} | {percent(hout['color'])} | {r['seconds']} |"
        )
    return "\n".join([*lines, ""])


TARGETS = {"all": 0.90, "each": 0.95, "held_out_all": 0.80}


def target_lines(quality: dict) -> list[str]:
    """Whether the 8-step guided rows meet the issue's targets, with the numbers."""
    out = []
    for r in quality["results"]:
        if r["steps"] != 8 or r["guidance_scale"] == 1.0:
            continue
        hin, hout = r["held-in"], r["held-out"]
        worst = min((hin[n], n) for n in ATTRIBUTE_NAMES if hin[n] is not None)
        ok = (
            hin["all"] >= TARGETS["all"]
            and worst[0] >= TARGETS["each"]
            and hout["all"] >= TARGETS["held_out_all"]
        )
        out.append(
            f"- {r['sampler']} 8 steps, guidance {r['guidance_scale']:g}: **{'met' if ok else 'not met'}**: "
            f"all requested right {percent(hin['all'])} (target 90%), weakest attribute {worst[1]} "
            f"{percent(worst[0])} (target 95% each), held-out all right {percent(hout['all'])} (target 80%)."
        )
    return out


def _section(record: Mapping[str, object], key: str) -> dict[str, Any]:
    value = record.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _ceiling_lines(quality: dict) -> list[str]:
    trip = quality.get("vae_round_trip")
    if not trip:
        return []
    cells = ", ".join(f"{n} {percent(trip[n])}" for n in (*ATTRIBUTE_NAMES, "all"))
    return [
        "The VAE's ceiling (fresh renders through the trained encoder and the served ONNX decoder, no "
        f"diffusion, read by the same classifier, held-out pairs included): {cells}. It is what the decoder "
        "makes of the encoder's latents of renders; sampled latents are not those, so a row can read "
        "a little higher, but an attribute the round trip loses often is one no sampler draws well.",
        "",
    ]


def _shortfall_lines(quality: dict) -> list[str]:
    if all("**met**" in line for line in target_lines(quality)):
        return []
    return [
        "Short of a target: compare the rows with the VAE's ceiling above. An attribute the round trip "
        "already loses needs a longer first stage (`--vae-steps`); one the decoder keeps but the "
        "sampled rows lose, and the held-out pairs, need a longer UNet stage (`--steps`). Train more, "
        "not a different metric.",
        "",
    ]


def render_card(m: Manifest, quality: dict, directory: Path) -> str:
    """The model card: what the model is and draws, how it was trained, how well it follows prompts."""
    t = m.training
    secs, tc, mc = (_section(t, key) for key in ("seconds", "train", "model"))
    files = [
        m.file,
        *(c.file for c in (m.text_encoder, m.vae_decoder) if c),
        m.tokenizer.file if m.tokenizer else None,
    ]
    sizes = ", ".join(f"`{f}` {(directory / f).stat().st_size / 1e6:.2f} MB" for f in files if f)
    rgb = lambda table: ", ".join(f"{k} `{v}`" for k, v in table.items())  # noqa: E731
    acc = quality["classifier_render_accuracy"]
    latent = m.latent
    assert latent is not None
    lines = [
        f"# Model card: {m.ref}",
        "",
        "A small latent text-to-image model (Stable Diffusion's architecture, diffusers classes) trained "
        "from scratch on this machine on captioned 32x32 renders of one filled shape on a plain background. "
        "It is the service's reference text-to-image model: imported with `make import` exactly as a "
        "user's pipeline would be, and served by the same workers.",
        "",
        f"Grids (default sampling: {quality['grid_config']}), one row per value, 8 seeds each; each prompt "
        "states only that attribute (and the shape noun), so the other attributes vary:",
        "",
        "| shape | color | background | position | size | held-out pairs |",
        "|---|---|---|---|---|---|",
        "| ![](samples-shape.png) | ![](samples-color.png) | ![](samples-background.png) "
        "| ![](samples-position.png) | ![](samples-size.png) | ![](samples-held-out.png) |",
        "",
        "Rows: "
        + "; ".join(f"{n}: {', '.join(VOCABULARIES[n])}" for n in ATTRIBUTE_NAMES)
        + "; held-out: "
        + ", ".join(f"{c} {s}" for c, s in sorted(HELD_OUT))
        + ' ("a {color} {shape}").',
        "",
        "| | |",
        "|---|---|",
        f"| files | {sizes} (ONNX opset {m.opset}) |",
        f"| denoiser | `UNet2DConditionModel`, channels {mc.get('unet_channels')}, cross-attention on "
        f"the text encoder's hidden states (only cross-attention: {mc.get('unet_only_cross_attention')}), "
        f"latents {latent.channels}x8x8 |",
        f"| text encoder | `CLIPTextModel`, {mc.get('text_layers')} layers, width {mc.get('text_hidden')}, "
        f"{mc.get('max_length')} tokens; `CLIPTokenizer` built here, one token per caption word |",
        f"| VAE | `AutoencoderKL`, factor 4 (32x32x3 to 8x8x4), channels {mc.get('vae_channels')}, "
        f"scaling factor {latent.scaling_factor:.4f} (1 / std of the training latents) |",
        f"| schedule | {m.schedule.beta_schedule} betas {m.schedule.beta_start}-{m.schedule.beta_end}, "
        f"T = {m.schedule.num_train_timesteps}, predicts `{m.schedule.prediction_type}`, trailing spacing |",
        f"| training | VAE {tc.get('vae_steps')} steps of batch {tc.get('vae_batch')} "
        f"(MSE + {tc.get('vae_l1', 0)} L1 + {tc.get('kl_weight')} KL); text encoder + UNet "
        f"{t.get('unet_steps_done')} of "
        f"{tc.get('steps')} planned steps of batch {tc.get('batch')} "
        f"on the latents of {tc.get('pool')} renders with fresh captions each step, caption dropout "
        f"{tc.get('caption_dropout')}, AdamW lr {tc.get('lr')} (cosine), EMA {tc.get('ema_decay')}, seed "
        f"{tc.get('seed')}; {secs.get('total')} s on {tc.get('threads')} CPU threads "
        f"(VAE {secs.get('vae')} s, UNet {secs.get('unet')} s; torch {t.get('torch')}) |",
        f"| decoder fine-tune | {_section(t, 'decoder').get('steps_done')} steps of batch "
        f"{_section(t, 'decoder').get('batch')} after the UNet stage, encoder frozen (MSE + 0.5 L1), "
        f"{_section(t, 'decoder').get('seconds')} s |",
        f"| sampling defaults | {m.sampling.default_sampler}, {m.sampling.default_steps} steps, guidance "
        f"{m.sampling.default_guidance_scale:g}; samplers {', '.join(m.sampling.samplers)} |",
        "",
        "Reproduce: `make train-text && make import-text ARGS=--overwrite && make eval-text`.",
        "",
        "## The data (`tooling/shapes`)",
        "",
        "- shapes: circle (diameter d), square (side d), upright isosceles triangle (base d, height d); "
        + "sizes: "
        + ", ".join(f"{k} d = {v} x 32 px" for k, v in SIZES.items())
        + ";",
        f"- shape colors (RGB): {rgb(COLORS)};",
        f"- backgrounds (RGB): {rgb(BACKGROUNDS)}; never the shape's color (no white on white);",
        "- positions (centre, share of width/height): "
        + ", ".join(f"{k} {v}" for k, v in POSITIONS.items())
        + f", jitter uniform +-{JITTER} px;",
        "- held-out color-shape pairs, never rendered for training: "
        + ", ".join(f"{c} {s}" for c, s in sorted(HELD_OUT))
        + ";",
        '- captions: templates with synonyms ("disc", "box", "little", "big", "grey", "in the middle", ...), '
        'varied order and optional attributes, e.g. "a small red circle on the left, black background", '
        '"blue square", "on a white background, big yellow triangle at the top". An attribute a caption '
        "leaves out was drawn at random.",
        "",
        "## Prompt adherence",
        "",
        "Written by `make eval-text` (`python -m tooling.evaluation.text_run`). Prompts come from the "
        "caption sampler (fixed seeds) with shape and color always stated and the other attributes as "
        "often as in training; each attribute is scored over the images whose prompt requested it; *all "
        "requested right* is the share of images with every requested attribute right. Images are drawn "
        "through the worker's own stages (tokenizer.json, ONNX text encoder, engine, samplers, VAE "
        "decoder). The attribute classifier (`tooling/evaluation/shapes_classifier.py`) is trained on the"
        " renderer only (with mild blur, noise and color shifts), never on model samples; on fresh "
        "renders it reads "
        + ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
        + ". Guidance 1 is the plain conditional model. "
        "DDPM at 1000 steps draws only the first third of the prompts (same seeds), to save time.",
        "",
        *_ceiling_lines(quality),
        render_table(quality),
        "Targets (from the issue, at 8 steps with guidance):",
        "",
        *target_lines(quality),
        "",
        *_shortfall_lines(quality),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
