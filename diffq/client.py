"""`diffq submit`: submit one job, show its progress, save its PNGs."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

SUBMIT_ATTEMPTS = 5  # a 503 or a lost connection is retried this many times in all
MAX_RETRY_WAIT_SECONDS = 30.0  # a longer Retry-After is cut to this
POLL_RETRY_SECONDS = 1.0  # a poll that got a 503 or no answer waits this long before the next
# An event stream silent this long is lost (the gateway sends a heartbeat every 15 s by default).
STREAM_READ_TIMEOUT_SECONDS = 60.0
LIVE = ("queued", "running")


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

            def show(step: int, job: dict[str, Any]) -> None:
                bar.n = step
                bar.set_postfix(status=job["status"], queue=job["queue_position"])
                bar.refresh()

            job = follow(client, job, deadline, show)
            if job["status"] in LIVE:
                print("timed out waiting for the job")
                return 1
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


def follow(
    client: httpx.Client, job: dict[str, Any], deadline: float, show: Callable[[int, dict[str, Any]], None]
) -> dict[str, Any]:
    """The job once terminal (or as last seen, at ``deadline``), following its event stream
    (``GET /v1/jobs/{id}/events``) and telling ``show`` each step. A lost stream is resumed
    with ``Last-Event-ID``; a gateway that will not stream (429: the key's streams are all
    open; an older gateway's 404) is polled instead."""
    last_id: str | None = None
    timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_SECONDS)
    while job["status"] in LIVE and time.monotonic() < deadline:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers, timeout=timeout) as r:
                if r.status_code != 200:
                    return _poll_until(client, job, deadline, show)
                for event in sse_events(r.iter_lines()):
                    last_id = event.id or last_id
                    if event.event == "job":
                        job = json.loads(event.data)
                        show(job["progress"]["step"], job)
                    elif event.event == "progress":
                        show(json.loads(event.data)["step"], job)
                    if job["status"] not in LIVE or time.monotonic() > deadline:
                        break
        except httpx.TransportError:  # the gateway restarting, say: resume shortly
            time.sleep(POLL_RETRY_SECONDS)
    return job


def _poll_until(
    client: httpx.Client, job: dict[str, Any], deadline: float, show: Callable[[int, dict[str, Any]], None]
) -> dict[str, Any]:
    while job["status"] in LIVE and time.monotonic() < deadline:
        time.sleep(0.1)
        job = _poll(client, job)
        show(job["progress"]["step"], job)
    return job


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its type, its data and the last event id the stream gave."""

    event: str
    data: str
    id: str | None


def sse_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a ``text/event-stream`` body, line by line (the HTML standard's parsing:
    comments and ``retry`` skipped, ``data`` lines joined, the id kept until a new one)."""
    event, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(event, "\n".join(data), last_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


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
