"""Job records as Redis hash fields, and the small conversions of Redis replies."""

from __future__ import annotations

import json
from typing import Any

from diffq.jobs import ANONYMOUS, Job, JobError, JobRequest, Status

# Fields a transition may change (the rest are written once, at submission).
MUTABLE_FIELDS = ("started_at", "finished_at", "step", "attempts", "worker", "error", "image_count")


def text(v: Any) -> str:
    """A reply value as text (redis-py gives bytes)."""
    return v.decode() if isinstance(v, bytes) else str(v)


def pairs(flat: list[Any]) -> dict[bytes, bytes]:
    """A Lua reply's flat [field, value, ...] list as the dict redis-py gives for a hash."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def encode(job: Job) -> dict[str, str]:
    return {
        "request": json.dumps(job.request.to_dict()),
        "status": job.status.value,
        "created_at": repr(job.created_at),
        "owner": job.owner,
        "work": str(job.request.evaluations),
        **mutable_fields(job),
        **({"webhook": job.webhook, "webhook_events": ",".join(job.webhook_events)} if job.webhook else {}),
    }


def mutable_fields(job: Job) -> dict[str, str]:
    """The ``MUTABLE_FIELDS`` of ``encode(job)`` that the job has (a transition compares only
    these: no need to serialize the request twice per change)."""
    d = {"step": str(job.step), "attempts": str(job.attempts), "image_count": str(job.image_count)}
    if job.started_at is not None:
        d["started_at"] = repr(job.started_at)
    if job.finished_at is not None:
        d["finished_at"] = repr(job.finished_at)
    if job.worker is not None:
        d["worker"] = job.worker
    if job.error is not None:
        d["error"] = json.dumps({"type": job.error.type, "message": job.error.message})
    return d


def decode(job_id: str, raw: dict[bytes, bytes]) -> Job:
    f = {text(k): text(v) for k, v in raw.items()}
    err = json.loads(f["error"]) if "error" in f else None
    return Job(
        id=job_id,
        request=JobRequest.from_dict(json.loads(f["request"])),
        status=Status(f["status"]),
        created_at=float(f["created_at"]),
        started_at=float(f["started_at"]) if "started_at" in f else None,
        finished_at=float(f["finished_at"]) if "finished_at" in f else None,
        step=int(f.get("step", 0)),
        attempts=int(f.get("attempts", 0)),
        worker=f.get("worker"),
        error=JobError(err["type"], err["message"]) if err else None,
        image_count=int(f.get("image_count", 0)),
        cancel_requested=f.get("cancel") == "1",
        owner=f.get("owner", ANONYMOUS),
        webhook=f.get("webhook"),
        webhook_events=tuple(filter(None, f.get("webhook_events", "").split(","))),
    )
