"""Draw one filled shape on a plain background (numpy masks over pixel centres, no anti-aliasing)."""

from __future__ import annotations

import numpy as np

from tooling.shapes.attributes import BACKGROUNDS, COLORS, IMAGE_SIDE, POSITIONS, SIZES, Attributes


def shape_mask(shape: str, cx: float, cy: float, d: float, side: int = IMAGE_SIDE) -> np.ndarray:
    """bool [side, side]: the pixels whose centres lie inside the shape centred at (cx, cy)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    half = d / 2
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":  # upright isosceles: apex at the top, base d, height d
        top = cy - half
        depth = (y - top) / d  # 0 at the apex, 1 at the base
        return (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= depth * half)
    raise ValueError(f"unknown shape {shape!r}")


def centre(
    attrs: Attributes, jitter: tuple[float, float] = (0.0, 0.0), side: int = IMAGE_SIDE
) -> tuple[float, float]:
    """The shape's centre in pixels: its position's anchor plus ``jitter``."""
    fx, fy = POSITIONS[attrs.position]
    return fx * side + jitter[0], fy * side + jitter[1]


def render(attrs: Attributes, jitter: tuple[float, float] = (0.0, 0.0), side: int = IMAGE_SIDE) -> np.ndarray:
    """uint8 [side, side, 3]: the shape ``attrs`` describes, its centre moved by ``jitter`` px."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[attrs.background]
    cx, cy = centre(attrs, jitter, side)
    image[shape_mask(attrs.shape, cx, cy, SIZES[attrs.size] * side, side)] = COLORS[attrs.color]
    return image


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] to float32 [..., 3, H, W] in [-1, 1] (the models' pixel range)."""
    x = images.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, -3).copy()
