"""A small class-conditional UNet denoiser for 28x28 single-channel images.

Torch-only: imported by the training and export tooling, never by the gateway or workers.
The timestep is a float per sample (fractional values work: the embedding is sinusoidal),
and the class label is an integer per sample where ``num_classes`` means "no class", so one
network serves conditional, unconditional and classifier-free-guided sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters; recorded in the checkpoint and the manifest."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    emb_dim: int = 128
    groups: int = 8
    attention: bool = True


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of float timesteps, shape [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _zero(module: nn.Module) -> None:
    """Zero-initialise a layer so each residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        _zero(self.conv2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, channels: int, groups: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(channels // heads)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        _zero(self.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attn = torch.softmax(q.transpose(-1, -2) @ k * self.scale, dim=-1)
        y = (v @ attn.transpose(-1, -2)).reshape(b, c, h, w)
        return x + self.out(y)


class UNet(nn.Module):
    """eps/v-predicting UNet: (sample [B,C,H,W], timestep [B] float, class_label [B] int64)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, g, e = config.base_channels, config.groups, config.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        # Index num_classes is the learned "no class" token used for unconditional predictions.
        self.class_emb = nn.Embedding(config.num_classes + 1, e)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)

        chans = [ch * m for m in config.channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch
        for i, c in enumerate(chans):
            self.down.append(ResBlock(c_prev, c, e, g))
            last = i == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid1 = ResBlock(c_prev, c_prev, e, g)
        self.mid_attn = SelfAttention(c_prev, g) if config.attention else nn.Identity()
        self.mid2 = ResBlock(c_prev, c_prev, e, g)
        self.up = nn.ModuleList()
        for c in reversed(chans):
            self.up.append(ResBlock(c_prev + c, c, e, g))
            c_prev = c
        self.norm_out = nn.GroupNorm(g, c_prev)
        self.conv_out = nn.Conv2d(c_prev, config.in_channels, 3, padding=1)
        _zero(self.conv_out)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_label: torch.Tensor
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(timestep, self.config.emb_dim))
        emb = F.silu(emb + self.class_emb(class_label))
        h = self.conv_in(sample)
        skips = []
        for block, down in zip(self.down, self.downsample, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if i > 0:  # every level below the deepest was downsampled by 2 on the way in
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
