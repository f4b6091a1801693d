"""PNG encoding of the images a worker stores, written here rather than through Pillow.

A PNG is a signature and three chunks: the header (size, 8-bit grey, RGB or RGBA), the pixel
rows compressed with zlib, each behind a one-byte filter type, and the end. Every row here uses
the "Up" filter (each byte less the one above it), computed with numpy; it compresses generated
images about as well as Pillow's choice (within a few percent on noisy 512x512 RGB, up to a
third larger on flat synthetic ones). Measured one at a time against ``Image.save(format="PNG")``:
28x28 grey 33 -> 13 us, 32x32 RGB 92 -> 30 us (most of Pillow's time there is its Python
plugin machinery, holding the GIL the worker's loop needs), noisy 512x512 RGB 36 -> 20 ms
(zlib's own work; it releases the GIL). Decoders read the same pixels (tests/unit/test_png.py).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels: grey, RGB, RGBA
_UP = 2  # the filter type of every row
LEVEL = 6  # zlib's default, as Pillow's


def encode_png(pixels: np.ndarray) -> bytes:
    """``pixels`` (uint8; height x width, or height x width x 1, 3 or 4 channels) as a PNG."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, not {pixels.dtype}")
    image = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if image.ndim != 3 or image.shape[2] not in _COLOUR_TYPE or 0 in image.shape:
        raise ValueError(f"cannot write {pixels.shape} pixels as a PNG: height x width (x 1, 3 or 4)")
    height, width, channels = image.shape
    rows = image.reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]  # the first row has zeros above it
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
