"""A seeded sampler of (attributes, caption, image): the training data and the eval prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tooling.shapes.attributes import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT,
    JITTER,
    POSITIONS,
    SHAPES,
    SIZES,
    Attributes,
    valid,
)
from tooling.shapes.captions import caption, choose_stated
from tooling.shapes.render import render


@dataclass(frozen=True)
class Sample:
    attributes: Attributes
    stated: frozenset[str]  # the attributes the caption states
    caption: str
    jitter: tuple[float, float]

    def image(self) -> np.ndarray:
        return render(self.attributes, self.jitter)


def draw_attributes(rng: np.random.Generator, held_out: bool = False) -> Attributes:
    """Uniform over the training combinations (never a held-out color-shape pair), or with
    ``held_out`` over the held-out pairs only; the background is never the shape's color."""

    def pick(options: list[str] | tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    if held_out:
        color, shape = sorted(HELD_OUT)[int(rng.integers(len(HELD_OUT)))]
    else:
        while True:
            shape, color = pick(SHAPES), pick(tuple(COLORS))
            if (color, shape) not in HELD_OUT:
                break
    background = pick([b for b in BACKGROUNDS if valid(color, b)])
    return Attributes(shape, color, background, pick(tuple(POSITIONS)), pick(tuple(SIZES)))


def draw_sample(rng: np.random.Generator, held_out: bool = False, always: tuple[str, ...] = ()) -> Sample:
    """One training sample, or with ``held_out`` a held-out prompt (which always states the
    color and the shape it is held out for); ``always`` names attributes the caption states."""
    attrs = draw_attributes(rng, held_out)
    stated = choose_stated(rng, always=("shape", "color", *always) if held_out else always)
    text = caption(attrs, stated, rng)
    jitter = (float(rng.uniform(-JITTER, JITTER)), float(rng.uniform(-JITTER, JITTER)))
    return Sample(attrs, stated, text, jitter)


def draw_batch(rng: np.random.Generator, n: int, held_out: bool = False) -> tuple[list[Sample], np.ndarray]:
    """``n`` samples and their images, uint8 [n, 32, 32, 3]."""
    samples = [draw_sample(rng, held_out) for _ in range(n)]
    return samples, np.stack([s.image() for s in samples])


def draw_any_attributes(rng: np.random.Generator) -> Attributes:
    """Uniform over every drawable combination, held-out pairs included (for the classifier,
    which must read every color and shape the eval asks for)."""

    def pick(options: list[str] | tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    shape, color = pick(SHAPES), pick(tuple(COLORS))
    background = pick([b for b in BACKGROUNDS if valid(color, b)])
    return Attributes(shape, color, background, pick(tuple(POSITIONS)), pick(tuple(SIZES)))


def draw_any_images(rng: np.random.Generator, n: int) -> tuple[list[Attributes], np.ndarray]:
    """``n`` renders of ``draw_any_attributes``, jittered as in training."""
    attrs = [draw_any_attributes(rng) for _ in range(n)]
    jitters = rng.uniform(-JITTER, JITTER, size=(n, 2))
    return attrs, np.stack(
        [render(a, (float(j[0]), float(j[1]))) for a, j in zip(attrs, jitters, strict=True)]
    )
