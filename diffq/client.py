"""`diffq submit`: submit one job, show its progress, save its PNGs."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

SUBMIT_ATTEMPTS = 5  # a 503 or a lost connection is retried this many times in all
MAX_RETRY_WAIT_SECONDS = 30.0  # a longer Retry-After is cut to this
POLL_RETRY_SECONDS = 1.0  # a poll that got a 503 or no answer waits this long before the next


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
    try:
        return _run(args, body, headers)
    except httpx.TransportError as e:  # the gateway went away for good, or never answered
        print(
            f"diffq submit: cannot reach {args.url} ({unreachable_reason(e)}); set --url or DIFFQ_URL",
            file=sys.stderr,
        )
        return 1


def _run(args: argparse.Namespace, body: dict[str, Any], headers: dict[str, str]) -> int:
    with httpx.Client(base_url=args.url, timeout=10, headers=headers) as client:
        r = post_job(client, body)
        if r.status_code not in (200, 202):
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
                job = _poll(client, job)
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


def post_job(
    client: httpx.Client,
    body: dict[str, Any],
    attempts: int = SUBMIT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> httpx.Response:
    """POST the job with a fresh Idempotency-Key, retried with the same key after a 503 (once
    its Retry-After has passed) or a lost connection; the last response.

    The key makes retrying safe: a submission whose answer was lost (a timeout between the
    gateway and its store, say) may have been accepted, and its retry then returns that job
    rather than queueing a second one.
    """
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        try:
            r = client.post("/v1/jobs", json=body, headers=headers)
        except httpx.TransportError as e:
            # A first try refused outright never reached a gateway (wrong URL, none running):
            # nothing to make safe by retrying, and the caller says so at once.
            if last or (attempt == 1 and isinstance(e, httpx.ConnectError)):
                raise
            wait = 1.0
            print(f"submit: no answer ({type(e).__name__}); retrying in {wait:g}s")
        else:
            if r.status_code != 503 or last:
                return r
            wait = retry_after(r)
            print(f"submit: {r.status_code} ({_error_message(r)}); retrying in {wait:g}s")
        sleep(wait)
    raise AssertionError("unreachable")  # the last attempt returned or raised


def retry_after(r: httpx.Response, default: float = 1.0) -> float:
    """The response's Retry-After in seconds (delta-seconds form), capped; ``default`` without one."""
    try:
        seconds = float(r.headers.get("Retry-After", default))
    except ValueError:
        seconds = default
    return min(MAX_RETRY_WAIT_SECONDS, max(0.0, seconds))


def _poll(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """The job read again; a 503 or a lost connection (the store restarting) keeps what we had."""
    try:
        r = client.get(f"/v1/jobs/{job['id']}")
    except httpx.TransportError:
        time.sleep(POLL_RETRY_SECONDS)
        return job
    if r.status_code == 503:
        time.sleep(min(retry_after(r), POLL_RETRY_SECONDS))
        return job
    return dict(r.raise_for_status().json())


def unreachable_reason(e: httpx.TransportError) -> str:
    """Why no answer came, in a few words: "connection refused", "timed out", ..."""
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    # OS errors read "[Errno 111] Connection refused": the number says nothing to a user.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(e).splitlines()[0] if str(e) else "")
    return text[:1].lower() + text[1:] if text else type(e).__name__


def _error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]
