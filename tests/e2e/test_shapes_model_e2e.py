"""The shipped text-to-image model (``shapes-sd``), served as a user would get it: a real
gateway and a worker loading the committed ONNX files, prompts in, PNGs out, the seed
contract held, and the prompt's color drawn."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

from tests.conftest import Stack, wait_for

MODEL = "shapes-sd"


def pngs(client: httpx.Client, body: dict) -> list[bytes]:
    job = client.post("/v1/jobs", json=body).json()
    done = wait_for(client, job["id"], {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done
    return [client.get(image["url"]).content for image in done["images"]]


def test_the_shipped_text_model_serves_prompts(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(DIFFQ_MODEL=MODEL)
    stack.start_gateway()
    stack.start_worker("worker-1")
    stack.wait_ready()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        served = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert served[MODEL]["kind"] == "text-to-image"
        red = {"model": MODEL, "prompt": "a large red square in the center, black background", "seed": 5}
        first = pngs(client, {**red, "num_images": 4})
        again = pngs(client, {**red, "num_images": 1, "seed": 7})
        assert first[2] == again[0]  # image i of seed s is image 0 of seed s + i
        blue = pngs(client, {**red, "prompt": "a large blue square in the center, black background"})
    images = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), dtype=float) for p in first]
    assert all(img.shape == (32, 32, 3) for img in images)
    # Averaged over four seeds, the centre of a "red square" is redder than it is blue, and the
    # same prompt with "blue" turns it around: the prompt, not the seed, picks the color.
    centre = np.mean([img[10:22, 10:22] for img in images], axis=(0, 1, 2))
    blue_centre = np.asarray(Image.open(io.BytesIO(blue[0])).convert("RGB"), dtype=float)[10:22, 10:22].mean(
        axis=(0, 1)
    )
    assert centre[0] > centre[2] + 40, centre
    assert blue_centre[2] > blue_centre[0] + 40, blue_centre
