"""The shipped MNIST model serves exactly as it did before pipelines arrived: the same request
gives the same pixels through a real worker. The last release before the pipeline change
(commit 31b0abb), run in-process on this machine's onnxruntime with two engine threads, gave
PNGs whose sha256 were recorded here; the PNGs were Pillow's until workers.png replaced it
(69ae14e), so the hashes are now of the decoded pixels, taken from PNGs that still matched
those recorded hashes byte for byte (on 3268d77)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from diffq.jobs import Job, JobRequest, Status, new_job_id
from diffq.store import RedisStore
from tests.conftest import ROOT, stack_env

MODEL = "mnist-cfg-unet"
# (sampler, steps, class_label, guidance_scale, seed, num_images) -> sha256 of each image's
# 28x28 uint8 pixels, row by row
GOLDEN = {
    ("dpmpp_2m", 8, 7, 1.5, 42, 2): [
        "f139a3a7175ed38452ae7d9737a34b3e4773ba14f924106f6ecb92e3fb9a610e",
        "b0b868a4edb932523c3ad6377f5ead03842adb2ff54bc95c4d7f3f01e659227d",
    ],
    ("ddim", 5, None, 1.0, 3, 1): ["6c3e28fd64eec9ed7404a7e08c35e5189a43250952584ebe6fb578d7062072c6"],
    ("euler_ancestral", 6, 3, 3.0, 11, 2): [
        "bd36b51aafe47c4e13899f363e219079213e5128fe83f07578b6e18d707ddedd",
        "67b487eb4b0ff07dc4be4d1cdb9b87358f931a6c36fa336fc385c9f8d396000b",
    ],
    ("ddpm", 10, 0, 0.0, 5, 1): ["8f02fb4a49f064fada51e63bc4c1ade604353f0daa33267829a723cf8783bc4e"],
}


def pixels_sha256(png: bytes | None) -> str:
    image = np.asarray(Image.open(io.BytesIO(png or b"")))
    assert image.shape == (28, 28) and image.dtype == np.uint8, image.shape
    return hashlib.sha256(image.tobytes()).hexdigest()


def test_the_same_requests_give_the_same_bytes_as_the_last_release(valkey: str, prefix: str) -> None:
    store = RedisStore(valkey, prefix=prefix)
    store.ensure_group(MODEL)
    jobs = {}
    for key in GOLDEN:
        sampler, steps, label, guidance, seed, n = key
        request = JobRequest(MODEL, label, n, steps, sampler, guidance, seed)
        jobs[key] = Job(new_job_id(), request, Status.QUEUED, time.time())
        store.submit(jobs[key])
    out = subprocess.run(
        [sys.executable, "-m", "diffq", "worker", "--burst", "--name", "golden"],
        env=stack_env(valkey, prefix),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    for key, job in jobs.items():
        record = store.get(job.id)
        assert record is not None and record.status == Status.SUCCEEDED, key
        got = [pixels_sha256(store.get_image(job.id, i)) for i in range(len(GOLDEN[key]))]
        assert got == GOLDEN[key], key
