"""The whole stack as a user runs it: embedded Valkey, gateway and worker processes, the
shipped model. Jobs with mixed parameters run concurrently and come back as PNGs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Stack, wait_for

MIXED = [
    {"class_label": 0, "num_images": 2, "steps": 8, "sampler": "dpmpp_2m", "guidance_scale": 3.0, "seed": 11},
    {"class_label": 7, "num_images": 1, "steps": 5, "sampler": "ddim", "guidance_scale": 1.0, "seed": 12},
    {
        "class_label": None,
        "num_images": 3,
        "steps": 12,
        "sampler": "euler_ancestral",
        "guidance_scale": 2.0,
        "seed": 13,
    },
    {"class_label": 4, "num_images": 1, "steps": 20, "sampler": "ddpm", "guidance_scale": 5.0, "seed": 14},
    {"class_label": 9, "num_images": 4, "steps": 4, "sampler": "dpmpp_2m", "guidance_scale": 0.0, "seed": 15},
]


@pytest.fixture
def stack(make_stack) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    s: Stack = make_stack(DIFFQ_MAX_WAIT_MS="50")
    s.start_gateway()
    s.start_worker("worker-a")
    s.wait_ready()
    yield s


def fetch_images(client: httpx.Client, job: dict) -> list[bytes]:
    out = []
    for image in job["images"]:
        r = client.get(image["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        out.append(r.content)
    return out


def overlaps(a: dict, b: dict) -> bool:
    ta, tb = a["timings"], b["timings"]
    return ta["started_at"] < tb["finished_at"] and tb["started_at"] < ta["finished_at"]


def run_concurrently(client: httpx.Client, bodies: list[dict]) -> list[dict]:
    ids: list[str | None] = [None] * len(bodies)

    def post(i: int) -> None:
        r = client.post("/v1/jobs", json=bodies[i])
        assert r.status_code == 202, r.text
        ids[i] = r.json()["id"]

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [wait_for(client, i, {"succeeded", "failed", "cancelled"}) for i in ids if i]


def test_concurrent_mixed_jobs_succeed_with_pngs(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        jobs = run_concurrently(client, MIXED)
        for body, job in zip(MIXED, jobs, strict=True):
            assert job["status"] == "succeeded", job
            assert job["progress"] == {"step": body["steps"], "total": body["steps"]}
            assert [im["seed"] for im in job["images"]] == [
                body["seed"] + i for i in range(body["num_images"])
            ]
            t = job["timings"]
            assert t["queue_ms"] >= 0 and t["run_ms"] > 0
            assert t["total_ms"] == pytest.approx(t["queue_ms"] + t["run_ms"], abs=0.2)
            for png in fetch_images(client, job):
                img = Image.open(io.BytesIO(png))
                assert img.format == "PNG" and img.size == (28, 28) and img.mode == "L"
                pixels = np.asarray(img)
                assert pixels.std() > 10, "an image should not be flat"


def test_same_seed_same_bytes_alone_or_batched(stack: Stack) -> None:
    probe = {
        "class_label": 3,
        "num_images": 2,
        "steps": 8,
        "sampler": "dpmpp_2m",
        "guidance_scale": 3.0,
        "seed": 99,
    }
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        alone = wait_for(client, client.post("/v1/jobs", json=probe).json()["id"], {"succeeded"})
        alone_pngs = fetch_images(client, alone)
        batched = run_concurrently(client, [*MIXED[:3], probe, *MIXED[3:]])
        together = batched[3]
        assert together["request"] == alone["request"]
        assert fetch_images(client, together) == alone_pngs
        # It really shared denoiser calls: with one worker, overlapping runs share every step.
        others = batched[:3] + batched[4:]
        assert any(overlaps(together, o) for o in others), [j["timings"] for j in batched]
        # and a different seed gives different images
        other = wait_for(
            client, client.post("/v1/jobs", json={**probe, "seed": 100}).json()["id"], {"succeeded"}
        )
        assert fetch_images(client, other) != alone_pngs


def test_cancel_a_running_job(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job = client.post("/v1/jobs", json={"class_label": 5, "steps": 1000, "sampler": "ddpm"}).json()
        running = wait_for(client, job["id"], {"running"})
        assert running["queue_position"] is None
        r = client.delete(f"/v1/jobs/{job['id']}")
        assert r.status_code == 202 and r.json()["cancel_requested"] is True
        done = wait_for(client, job["id"], {"cancelled", "succeeded"})
        assert done["status"] == "cancelled"
        assert done["progress"]["step"] < 1000
        assert client.get(f"/v1/jobs/{job['id']}/images/0").status_code == 404
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409
        # the worker goes on serving
        after = client.post("/v1/jobs", json={"class_label": 1, "steps": 4}).json()
        assert wait_for(client, after["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_worker_survives_idle_periods_longer_than_the_redis_timeout(stack: Stack) -> None:
    time.sleep(2.5)  # the stack runs with a 1 s Redis socket timeout
    assert stack.procs["worker-a"].poll() is None, stack.read_log("worker-a")
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job = client.post("/v1/jobs", json={"class_label": 8, "steps": 4}).json()
        assert wait_for(client, job["id"], {"succeeded", "failed"})["status"] == "succeeded"
    assert "Traceback" not in stack.read_log("worker-a")


def test_progress_is_reported_while_running(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job = client.post("/v1/jobs", json={"class_label": 2, "steps": 300, "sampler": "ddim"}).json()
        seen = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            final = client.get(f"/v1/jobs/{job['id']}").json()
            seen.add(final["progress"]["step"])
            if final["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.005)
        assert final["status"] == "succeeded"
        assert len([s for s in seen if 0 < s < 300]) >= 2, seen


def test_worker_logs_are_json_lines_with_job_ids(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job = client.post("/v1/jobs", json={"class_label": 6, "steps": 4}).json()
        wait_for(client, job["id"], {"succeeded"})
    records = [json.loads(line) for line in stack.read_log("worker-a").splitlines() if line.startswith("{")]
    states = [r["status"] for r in records if r.get("job_id") == job["id"]]
    assert states == ["running", "succeeded"]


def knn_digits(images: np.ndarray, k: int = 5) -> np.ndarray:
    """A plain k-nearest-neighbour reading of 28x28 digits against 10,000 MNIST training images
    (about 95% accurate on real digits): an independent check that the service drew the digit
    that was asked for."""
    from tooling.training.data import load_mnist

    x, y = load_mnist("train")
    ref = x[:10_000].reshape(10_000, -1).astype(np.float32)
    q = images.reshape(len(images), -1).astype(np.float32)
    d = (q**2).sum(1)[:, None] - 2 * q @ ref.T + (ref**2).sum(1)[None, :]
    nearest = y[:10_000][np.argsort(d, axis=1)[:, :k]]
    return np.array([np.bincount(row, minlength=10).argmax() for row in nearest])


def test_images_show_the_requested_digit(stack: Stack) -> None:
    bodies = [{"class_label": d, "num_images": 3, "seed": 1000 + d} for d in range(10)]  # model defaults
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        jobs = run_concurrently(client, bodies)
        pngs = [png for job in jobs for png in fetch_images(client, job)]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)), dtype=np.float32) / 127.5 - 1 for p in pngs])
    wanted = np.repeat(np.arange(10), 3)
    agreement = float((knn_digits(pixels) == wanted).mean())
    assert agreement >= 0.8, f"only {agreement:.0%} of images read as the requested digit"


def test_submit_cli_saves_the_pngs(stack: Stack, tmp_path: Path) -> None:
    args = ["--url", stack.base_url, "--class-label", "4", "--num-images", "2", "--seed", "5"]
    out = subprocess.run(
        [sys.executable, "-m", "diffq", "submit", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    saved = sorted(tmp_path.glob("*.png"))
    assert len(saved) == 2
    assert Image.open(saved[0]).size == (28, 28)
    assert "seed 5" in out.stdout and "seed 6" in out.stdout


def test_prefer_wait_answers_once_the_job_is_done(stack: Stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        # On submit: one request, the finished job back.
        r = client.post("/v1/jobs", json={"class_label": 6, "steps": 6}, headers={"Prefer": "wait=20"})
        assert r.status_code == 202 and r.headers["Preference-Applied"] == "wait=20"
        assert r.json()["status"] == "succeeded" and len(r.json()["images"]) == 1
        # On poll: a long job, held until it finishes.
        job = client.post("/v1/jobs", json={"class_label": 6, "steps": 300, "sampler": "ddpm"}).json()
        r = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "respond-async, wait=20"})
        assert r.json()["status"] == "succeeded", r.json()
