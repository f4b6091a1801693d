"""Prompt adherence from what prompts requested and what a classifier read (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tooling.shapes.attributes import ATTRIBUTE_NAMES


def adherence(
    requested: Sequence[Mapping[str, str]], read: Sequence[Mapping[str, str]]
) -> dict[str, float | None]:
    """Per-attribute accuracy over the images whose prompt requested that attribute (None when
    none did), and ``all``: the share of images with every requested attribute right."""
    if len(requested) != len(read):
        raise ValueError(f"{len(requested)} prompts but {len(read)} readings")
    out: dict[str, float | None] = {}
    for name in ATTRIBUTE_NAMES:
        hits = [got[name] == want[name] for want, got in zip(requested, read, strict=True) if name in want]
        out[name] = sum(hits) / len(hits) if hits else None
    every = [all(got[n] == v for n, v in want.items()) for want, got in zip(requested, read, strict=True)]
    out["all"] = sum(every) / len(every) if every else None
    return out


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
