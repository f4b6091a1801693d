"""The worker's PNG writer (workers.png): what Pillow (an independent decoder) reads back is
the pixels written, for every shape the worker stores and the edges of the format."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from workers.png import SIGNATURE, encode_png

RNG = np.random.default_rng(7)
SHAPES = [(28, 28), (1, 1), (1, 9), (9, 1), (32, 32, 3), (48, 64, 3), (5, 7, 4), (6, 3, 1), (256, 256, 3)]
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # by channels


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pillow_reads_back_the_pixels_written(shape: tuple[int, ...]) -> None:
    pixels = RNG.integers(0, 256, shape, dtype=np.uint8)  # every byte value, rows unlike each other
    png = encode_png(pixels)
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every row and checks each chunk's CRC
    assert image.format == "PNG" and image.size == (shape[1], shape[0])
    channels = shape[2] if len(shape) == 3 else 1
    assert image.mode == MODES[channels]
    np.testing.assert_array_equal(np.asarray(image), pixels.reshape(shape[:2]) if channels == 1 else pixels)


def test_a_slice_of_a_larger_array_is_written_as_its_own_pixels() -> None:
    batch = RNG.integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    view = batch[1, ::2, 5:37]  # strided, not contiguous
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(view)))), view)


def test_smooth_images_compress() -> None:
    y, x = np.mgrid[0:128, 0:128]
    gradient = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)
    png = encode_png(gradient)
    assert png.startswith(SIGNATURE) and len(png) < gradient.nbytes / 20
    assert zlib.decompress(png[png.index(b"IDAT") + 4 : -16])[0] == 2  # rows filtered ("Up")


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4), np.uint16),
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
    ],
    ids=lambda p: f"{p.dtype}{p.shape}",
)
def test_what_is_not_an_image_is_refused(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"PNG|uint8"):
        encode_png(pixels)
