"""The shapes data: renders show what the attributes say, captions say what they state, the
held-out pairs never reach training, and every draw is fixed by its seed."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from tooling.shapes.attributes import (
    ATTRIBUTE_NAMES,
    BACKGROUNDS,
    COLORS,
    HELD_OUT,
    IMAGE_SIDE,
    POSITIONS,
    SHAPES,
    SIZES,
    Attributes,
    valid,
)
from tooling.shapes.captions import caption, caption_words, choose_stated, parse
from tooling.shapes.dataset import draw_any_images, draw_attributes, draw_batch, draw_sample
from tooling.shapes.render import render, shape_mask


def test_colors_are_clearly_distinct() -> None:
    shapes = list(COLORS.values())
    for a, b in itertools.combinations(shapes, 2):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) >= 60, (a, b)
    for color, rgb in COLORS.items():
        for background, bg in BACKGROUNDS.items():
            if valid(color, background):
                assert max(abs(x - y) for x, y in zip(rgb, bg, strict=True)) >= 60


def test_a_shape_on_its_own_color_is_refused() -> None:
    with pytest.raises(ValueError, match="invisible"):
        Attributes("circle", "white", "white", "center", "large")
    with pytest.raises(ValueError, match="shape"):
        Attributes("hexagon", "red", "black", "center", "large")


@pytest.mark.parametrize("position", list(POSITIONS))
def test_render_puts_the_shape_at_its_position_in_its_color(position: str) -> None:
    attrs = Attributes("square", "red", "gray", position, "small")
    image = render(attrs)
    inside = np.all(image == COLORS["red"], axis=-1)
    ys, xs = np.nonzero(inside)
    fx, fy = POSITIONS[position]
    assert abs(xs.mean() + 0.5 - fx * IMAGE_SIDE) < 0.6
    assert abs(ys.mean() + 0.5 - fy * IMAGE_SIDE) < 0.6
    assert np.all(image[~inside] == BACKGROUNDS["gray"])


def test_render_sizes_and_shapes_cover_the_expected_area() -> None:
    side = IMAGE_SIDE
    for size, frac in SIZES.items():
        d = frac * side
        expected = {"circle": np.pi * d * d / 4, "square": d * d, "triangle": d * d / 2}
        for shape in SHAPES:
            area = shape_mask(shape, side / 2, side / 2, d).sum()
            assert abs(area - expected[shape]) / expected[shape] < 0.2, (shape, size, area)
    large = render(Attributes("circle", "blue", "black", "center", "large"))
    small = render(Attributes("circle", "blue", "black", "center", "small"))
    assert np.all(large == COLORS["blue"], axis=-1).sum() > 3 * np.all(small == COLORS["blue"], axis=-1).sum()


def test_triangle_is_upright() -> None:
    mask = shape_mask("triangle", 16, 16, 16)
    widths = mask.sum(axis=1)
    rows = np.nonzero(widths)[0]
    assert widths[rows[0]] < widths[rows[-1]]  # narrow apex on top, wide base below
    assert mask[rows[-1]].sum() >= 14


def test_jitter_moves_the_shape() -> None:
    attrs = Attributes("circle", "yellow", "black", "center", "small")
    a = np.nonzero(np.all(render(attrs) == COLORS["yellow"], axis=-1))[1].mean()
    b = np.nonzero(np.all(render(attrs, (1.5, 0.0)) == COLORS["yellow"], axis=-1))[1].mean()
    assert 1.0 < b - a < 2.0


def test_captions_parse_back_to_exactly_what_they_state() -> None:
    rng = np.random.default_rng(0)
    for _ in range(3000):
        sample = draw_sample(rng)
        stated = {k: v for k, v in sample.attributes.as_dict().items() if k in sample.stated}
        assert parse(sample.caption) == stated, sample.caption


def test_every_caption_word_is_in_the_vocabulary() -> None:
    words = set(caption_words())
    rng = np.random.default_rng(1)
    for _ in range(500):
        assert set(re.findall(r"[a-z]+", draw_sample(rng).caption)) <= words


def test_captions_vary_in_order_and_synonyms() -> None:
    rng = np.random.default_rng(2)
    attrs = Attributes("circle", "red", "black", "left", "small")
    everything = set(ATTRIBUTE_NAMES)
    texts = {caption(attrs, everything, rng) for _ in range(300)}
    assert len(texts) > 50
    assert any(t.startswith("on the left") or t.startswith("to the left") for t in texts)
    assert any("disc" in t for t in texts) and any("little" in t for t in texts)


def test_held_out_pairs_never_appear_in_training_draws() -> None:
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(5000):
        a = draw_attributes(rng)
        assert (a.color, a.shape) not in HELD_OUT
        assert valid(a.color, a.background)
        seen.add((a.color, a.shape))
    assert len(seen) == len(SHAPES) * len(COLORS) - len(HELD_OUT)


def test_held_out_prompts_state_their_pair() -> None:
    rng = np.random.default_rng(4)
    for _ in range(300):
        s = draw_sample(rng, held_out=True)
        assert s.attributes.held_out and {"shape", "color"} <= s.stated
        parsed = parse(s.caption)
        assert (parsed["color"], parsed["shape"]) in HELD_OUT


def test_the_classifier_data_covers_every_pair() -> None:
    attrs, images = draw_any_images(np.random.default_rng(5), 2000)
    assert {(a.color, a.shape) for a in attrs} >= HELD_OUT
    assert images.shape == (2000, IMAGE_SIDE, IMAGE_SIDE, 3) and images.dtype == np.uint8


def test_draws_are_fixed_by_the_seed() -> None:
    a_samples, a_images = draw_batch(np.random.default_rng(7), 64)
    b_samples, b_images = draw_batch(np.random.default_rng(7), 64)
    _, c_images = draw_batch(np.random.default_rng(8), 64)
    assert a_samples == b_samples and np.array_equal(a_images, b_images)
    assert not np.array_equal(a_images, c_images)


def test_choose_stated_honours_always() -> None:
    rng = np.random.default_rng(9)
    assert all({"shape", "color"} <= choose_stated(rng, ("shape", "color")) for _ in range(200))
