"""``make train-text``: train the shapes text-to-image model from a seed and save its pipeline.

Three stages on CPU: the VAE on rendered images (reconstruction + a small KL term), then the text
encoder and UNet together on the VAE's latents of a fixed pool of renders, each step with fresh
captions of the pool's attributes (unstated attributes vary, so a caption's silence means
"any"), the caption dropped to "" 10% of the time for classifier-free guidance, v-prediction
loss, EMA weights; then the VAE decoder fine-tuned on the frozen encoder's latents
(``tooling.text_training.decoder``). Saves a ``StableDiffusionPipeline`` folder (``save_pretrained``), losses
(``losses.csv``) and how it was trained (``training.json``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tooling.shapes.captions import caption, choose_stated
from tooling.shapes.dataset import draw_batch
from tooling.shapes.render import to_unit
from tooling.text_training.decoder import DECODER_BATCH, DECODER_LR, DECODER_STEPS, finetune_decoder
from tooling.text_training.models import (
    ModelConfig,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
)


@dataclass(frozen=True)
class TrainConfig:
    vae_steps: int = 5000
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_l1: float = 0.5  # L1 beside MSE: flat colors and edges come out sharper
    kl_weight: float = 1e-6
    pool: int = 40_000  # renders whose latents the UNet trains on
    steps: int = 9000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 2
    max_minutes: float = 0.0  # >0: stop the UNet stage early at this wall time (recorded)
    decoder_steps: int = DECODER_STEPS  # the decoder fine-tune after the UNet (its seed: seed + 1)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


class LossLog:
    """Losses to a CSV file as they come (one row per logged step)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["stage", "step", "loss", "lr", "seconds"])
        self.started = time.monotonic()

    def write(self, stage: str, step: int, loss: float, lr: float) -> None:
        self.writer.writerow(
            [stage, step, f"{loss:.6f}", f"{lr:.6g}", f"{time.monotonic() - self.started:.1f}"]
        )
        self.file.flush()


def train_vae(cfg: TrainConfig, model_cfg: ModelConfig, rng: np.random.Generator, log: LossLog) -> Any:
    vae = build_vae(model_cfg)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    bar = tqdm(range(cfg.vae_steps), desc="vae", unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, 50)
        _, images = draw_batch(rng, cfg.vae_batch)
        x = torch.from_numpy(to_unit(images))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        l1 = torch.nn.functional.l1_loss(recon, x)
        loss = mse + cfg.vae_l1 * l1 + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == cfg.vae_steps - 1:
            log.write("vae", step, float(mse), opt.param_groups[0]["lr"])
            bar.set_postfix(mse=f"{float(mse):.4f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(vae: Any, cfg: TrainConfig, rng: np.random.Generator) -> tuple[list, torch.Tensor]:
    """The pool's samples and their latent means (unscaled)."""
    samples, latents = [], []
    for start in tqdm(range(0, cfg.pool, 500), desc="encode", unit="chunk"):
        batch, images = draw_batch(rng, min(500, cfg.pool - start))
        samples.extend(batch)
        latents.append(vae.encode(torch.from_numpy(to_unit(images))).latent_dist.mean)
    return samples, torch.cat(latents)


def train(cfg: TrainConfig, model_cfg: ModelConfig, out: Path) -> dict[str, Any]:
    """Train both stages and write the pipeline folder ``out/pipeline``; returns training.json."""
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    log = LossLog(out / "losses.csv")
    started = time.monotonic()

    vae = train_vae(cfg, model_cfg, rng, log)
    vae_seconds = time.monotonic() - started
    samples, latents = encode_pool(vae, cfg, rng)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling

    tokenizer = build_tokenizer(out / "tokenizer-files", model_cfg)
    text_encoder = build_text_encoder(model_cfg, tokenizer)
    unet = build_unet(model_cfg)
    scheduler = build_scheduler(model_cfg)
    alphas = scheduler.alphas_cumprod.float()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    token_cache: dict[str, list[int]] = {}

    def ids_of(texts: list[str]) -> torch.Tensor:
        for t in texts:
            if t not in token_cache:
                token_cache[t] = tokenizer(
                    t, padding="max_length", max_length=model_cfg.max_length, truncation=True
                ).input_ids
        return torch.tensor([token_cache[t] for t in texts])

    unet_started = time.monotonic()
    done = 0
    bar = tqdm(range(cfg.steps), desc="unet", unit="step")
    for step in bar:
        if cfg.max_minutes and time.monotonic() - unet_started > cfg.max_minutes * 60:
            break
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(samples), size=cfg.batch)
        texts = [
            "" if rng.random() < cfg.caption_dropout else caption(s.attributes, choose_stated(rng), rng)
            for s in (samples[i] for i in idx)
        ]
        x0 = latents[torch.from_numpy(idx)]
        t = torch.from_numpy(rng.integers(0, len(alphas), size=cfg.batch))
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        v = a.sqrt() * noise - (1 - a).sqrt() * x0
        hidden = text_encoder(ids_of(texts)).last_hidden_state
        loss = torch.nn.functional.mse_loss(unet(xt, t, hidden).sample, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, p in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
        done = step + 1
        if step % 10 == 0:
            log.write("unet", step, float(loss), lr)
            bar.set_postfix(loss=f"{float(loss):.4f}")
    unet_seconds = time.monotonic() - unet_started
    decoder_started = time.monotonic()
    vae, decoder_done = finetune_decoder(vae, steps=cfg.decoder_steps, seed=cfg.seed + 1, log=log)
    decoder_seconds = time.monotonic() - decoder_started

    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=ema_text.eval(),
        tokenizer=tokenizer,
        unet=ema_unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    record = {
        "train": asdict(cfg),
        "model": model_cfg.as_dict(),
        "unet_steps_done": done,
        "decoder": {"steps": cfg.decoder_steps, "steps_done": decoder_done, "batch": DECODER_BATCH,
                    "lr": DECODER_LR, "seed": cfg.seed + 1, "seconds": round(decoder_seconds, 1)},
        "latent_scaling_factor": scaling,
        "seconds": {"vae": round(vae_seconds, 1), "unet": round(unet_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
        "torch": torch.__version__,
    }  # fmt: skip
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


QUICK = TrainConfig(vae_steps=20, pool=1000, steps=20, warmup=5, decoder_steps=5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("var/text"))
    p.add_argument("--quick", action="store_true", help="a smoke run: a few steps of each stage")
    p.add_argument("--steps", type=int, default=None, help=f"UNet steps (default {TrainConfig.steps})")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop the UNet stage at this wall time")
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else TrainConfig()
    overrides = {"seed": a.seed, "max_minutes": a.max_minutes}
    if a.steps is not None:
        overrides["steps"] = a.steps
    if a.vae_steps is not None:
        overrides["vae_steps"] = a.vae_steps
    record = train(TrainConfig(**{**asdict(cfg), **overrides}), ModelConfig(), a.out)
    print(json.dumps(record["seconds"]), f"-> {a.out / 'pipeline'}")


if __name__ == "__main__":
    main()
