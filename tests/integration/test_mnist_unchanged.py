"""The shipped MNIST model serves exactly as it did before pipelines arrived: the same request
gives the same PNG bytes through a real worker. The hashes were recorded by running the last
release before the pipeline change (commit 31b0abb) in-process, on this machine's
onnxruntime, two engine threads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

from diffq.jobs import Job, JobRequest, Status, new_job_id
from diffq.store import RedisStore
from tests.conftest import ROOT, stack_env

MODEL = "mnist-cfg-unet"
# (sampler, steps, class_label, guidance_scale, seed, num_images) -> sha256 of each PNG
GOLDEN = {
    ("dpmpp_2m", 8, 7, 1.5, 42, 2): [
        "670642748a7b445478bc8173c29a3f4afb2c6cdd18bc7dfbf1845b41e8977e92",
        "607c78d749860388cc345e3ed2101e70e1be4af4743df5ccebe4f25cdf430537",
    ],
    ("ddim", 5, None, 1.0, 3, 1): ["aaba3f2be796dc538caf7a26cfe009c128a4b92d10fcee4425917a699d171131"],
    ("euler_ancestral", 6, 3, 3.0, 11, 2): [
        "f1aa22811339a2253ff59b3b16e6efa3880188a03cbd18449d78edc73aa945a8",
        "05353717495aa4ac60fc08d22984e998b6ba3277bfd0ef8636943e6f0503a003",
    ],
    ("ddpm", 10, 0, 0.0, 5, 1): ["66adadb8fd679442ab174dcf37bf3b33c69a8f8ee5a64ee974b333dc7e4ed986"],
}


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
        got = [hashlib.sha256(store.get_image(job.id, i) or b"").hexdigest() for i in range(len(GOLDEN[key]))]
        assert got == GOLDEN[key], key
