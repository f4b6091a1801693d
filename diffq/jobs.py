"""Jobs as data: the request a worker runs, the record the service keeps, and its state machine.

Pure: no Redis, HTTP or model here. ``diffq.store`` persists records; the gateway and workers
change them only through ``transition``, which checks the one table of allowed moves.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from sampling.denoise import is_guided

SEED_MAX = 2**63 - 1


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Priority(StrEnum):
    """Workers take every waiting high job before any normal one, and normal before low."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # claim order

ANONYMOUS = "anonymous"  # the owner of every job when auth is off


class ErrorType(StrEnum):
    """Why a job failed: the stable ``error.type`` of a failed job."""

    INVALID_REQUEST = "invalid_request"  # passed the gateway, but the worker's model refuses it
    INFERENCE_ERROR = "inference_error"  # the denoiser call raised
    MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"  # delivered too often without finishing
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the job's deadline passed before it finished


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})

# What a webhook can be told: a job started (each attempt; off unless asked) or ended.
WEBHOOK_EVENTS = ("started", "succeeded", "failed", "cancelled", "expired")
DEFAULT_WEBHOOK_EVENTS = ("succeeded", "failed", "cancelled", "expired")

# Every allowed move. running -> queued is a reclaim: a worker died and the job goes back.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.EXPIRED, Status.FAILED}),
    Status.RUNNING: frozenset(
        {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED, Status.QUEUED}
    ),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.EXPIRED: frozenset(),
}


class InvalidTransition(Exception):
    pass


def new_job_id() -> str:
    """A random 128-bit id, hex."""
    return secrets.token_hex(16)


def new_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


def image_seed(job_seed: int, index: int) -> int:
    """The seed of a job's ``index``-th image: consecutive, wrapping within 0..2^63-1."""
    return (job_seed + index) % (SEED_MAX + 1)


@dataclass(frozen=True)
class JobRequest:
    """A validated, fully resolved request: every default filled, the seed drawn."""

    model: str
    class_label: int | None
    num_images: int
    steps: int
    sampler: str
    guidance_scale: float
    seed: int
    priority: Priority = Priority.NORMAL
    deadline_seconds: float | None = None  # from submission; None = no deadline
    prompt: str | None = None  # text-to-image models: what to draw
    negative_prompt: str | None = None  # text models: the unconditional side of guidance ("" if None)
    width: int | None = None  # output pixels; None: the model's native size
    height: int | None = None

    @property
    def conditional(self) -> bool:
        """Whether the job names a condition (a class or a prompt) that guidance can amplify."""
        return self.class_label is not None or self.prompt is not None

    @property
    def guided(self) -> bool:
        return is_guided(self.conditional, self.guidance_scale)

    @property
    def rows_per_step(self) -> int:
        """Denoiser rows this job occupies per step (guidance doubles them)."""
        return self.num_images * (2 if self.guided else 1)

    @property
    def evaluations(self) -> int:
        """Denoiser row-evaluations for the whole job: the unit of queued work."""
        return self.rows_per_step * self.steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "class_label": self.class_label,
            "num_images": self.num_images,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "priority": self.priority.value,
            "deadline_seconds": self.deadline_seconds,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRequest:
        return cls(
            model=str(d["model"]),
            class_label=None if d["class_label"] is None else int(d["class_label"]),
            num_images=int(d["num_images"]),
            steps=int(d["steps"]),
            sampler=str(d["sampler"]),
            guidance_scale=float(d["guidance_scale"]),
            seed=int(d["seed"]),
            priority=Priority(d.get("priority", Priority.NORMAL)),
            deadline_seconds=None if d.get("deadline_seconds") is None else float(d["deadline_seconds"]),
            prompt=None if d.get("prompt") is None else str(d["prompt"]),
            negative_prompt=None if d.get("negative_prompt") is None else str(d["negative_prompt"]),
            width=None if d.get("width") is None else int(d["width"]),
            height=None if d.get("height") is None else int(d["height"]),
        )


@dataclass(frozen=True)
class JobError:
    type: str
    message: str


@dataclass(frozen=True)
class Job:
    """The record of one job. Times are unix seconds (float)."""

    id: str
    request: JobRequest
    status: Status
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    attempts: int = 0
    worker: str | None = None
    error: JobError | None = None
    image_count: int = 0
    cancel_requested: bool = False
    owner: str = ANONYMOUS  # the API key (by name) that submitted it
    webhook: str | None = None  # the URL told of ``webhook_events`` (a delivery per event)
    webhook_events: tuple[str, ...] = ()

    @property
    def deadline_at(self) -> float | None:
        d = self.request.deadline_seconds
        return None if d is None else self.created_at + d

    def past_deadline(self, now: float) -> bool:
        deadline = self.deadline_at
        return deadline is not None and now >= deadline

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def queue_seconds(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.created_at

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def total_seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.created_at


def transition(job: Job, target: Status, now: float, **changes: Any) -> Job:
    """``job`` moved to ``target``; raises ``InvalidTransition`` if the table forbids it."""
    if target not in TRANSITIONS[job.status]:
        raise InvalidTransition(f"job {job.id}: {job.status} -> {target} is not allowed")
    updates: dict[str, Any] = {"status": target, **changes}
    if target == Status.RUNNING:
        updates.setdefault("started_at", now)
        updates["attempts"] = job.attempts + 1
    elif target == Status.QUEUED:
        updates.update(started_at=None, step=0, worker=None)
    elif target in TERMINAL:
        updates["finished_at"] = now
    return replace(job, **updates)


def expire(job: Job, now: float) -> Job:
    """``job`` ended ``expired``: its deadline passed before it finished."""
    message = f"not finished within its deadline of {job.request.deadline_seconds or 0:g} s"
    return transition(job, Status.EXPIRED, now, error=JobError(ErrorType.DEADLINE_EXCEEDED, message))
