"""`diffq submit`: submit one job, show its progress, save its PNGs."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import httpx
from tqdm import tqdm


def submit(args: argparse.Namespace) -> int:
    """Submit the job ``args`` describe (unset options take the server's defaults), follow it to
    the end and save its images under ``args.out``; the exit status."""
    body = {
        k: v
        for k, v in {
            "model": args.model,
            "class_label": args.class_label,
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt,
            "width": args.width,
            "height": args.height,
            "num_images": args.num_images,
            "steps": args.steps,
            "sampler": args.sampler,
            "guidance_scale": args.guidance_scale,
            "seed": args.seed,
            "priority": args.priority,
        }.items()
        if v is not None
    }
    key = args.api_key or os.environ.get("DIFFQ_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=args.url, timeout=10, headers=headers) as client:
        r = client.post("/v1/jobs", json=body)
        if r.status_code != 202:
            print(f"submit failed ({r.status_code}): {r.text}")
            return 1
        job = r.json()
        print(f"job {job['id']} queued (seed {job['request']['seed']})")
        deadline = time.monotonic() + args.timeout
        with tqdm(total=job["progress"]["total"], unit="step") as bar:
            while job["status"] in ("queued", "running"):
                if time.monotonic() > deadline:
                    print("timed out waiting for the job")
                    return 1
                time.sleep(0.1)
                job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
                bar.n = job["progress"]["step"]
                bar.set_postfix(status=job["status"], queue=job["queue_position"])
                bar.refresh()
        if job["status"] != "succeeded":
            print(f"job {job['status']}: {job.get('error')}")
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(job["images"]):
            path = Path(args.out) / f"{job['id']}-{i}.png"
            path.write_bytes(client.get(image["url"]).raise_for_status().content)
            print(f"saved {path} (seed {image['seed']})")
    return 0
