"""What the job routes do: submit (idempotent, optionally waiting), read (optionally waiting),
cancel, fetch an image. Async, on the event loop with the store's asyncio connection: no
operation takes a thread.

Each operation answers a ``JobAnswer``: the job, its queue position and the headers to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace

from diffq.errors import Conflict, IdempotencyConflict, NotFound, Unavailable, ValidationFailed
from diffq.eta import Estimate
from diffq.jobs import (
    DEFAULT_WEBHOOK_EVENTS,
    WEBHOOK_EVENTS,
    Job,
    JobRequest,
    Priority,
    Status,
    expire,
    new_job_id,
    transition,
)
from diffq.store import RedisStore
from service.deps import ClientGone
from service.requests import resolve
from service.schemas import JobCreate
from service.state import State
from service.waiters import TooManyWaiters
from webhooks.addresses import check_url, refusal

log = logging.getLogger("diffq.gateway")


@dataclass(frozen=True)
class JobAnswer:
    job: Job
    position: int | None = None  # in its queue, when queued
    headers: dict[str, str] = field(default_factory=dict)
    client_gone: bool = False  # the client went away while it waited: nobody hears this answer
    estimate: Estimate | None = None  # when a queued or running job should start and finish


async def submit(
    state: State,
    body: JobCreate,
    owner: str,
    *,
    idempotency_key: str | None,
    wait: float | None,
    gone: ClientGone,
) -> JobAnswer:
    """Queue a job (or find the one an Idempotency-Key's earlier try queued), then wait for it if
    asked. The caller holds the waiting place already (taken before the job was queued)."""
    req = resolve(body, state.models, state.default_model)
    check_admissible(state, req, owner)
    events = webhook_events(state, body, owner)
    job = Job(
        id=new_job_id(),
        request=req,
        status=Status.QUEUED,
        created_at=time.time(),
        owner=owner,
        webhook=body.webhook,
        webhook_events=events,
    )
    fingerprint = request_fingerprint(job, body.seed) if idempotency_key is not None else ""
    try:
        limits = replace(state.limits, weight=state.tenants.weight(owner))
        submitted = await state.store.submit_async(job, limits, idempotency_key, fingerprint)
    except Unavailable as e:
        if RedisStore.fault(e).maybe_applied:
            raise maybe_accepted(e, job.id) from e
        raise
    headers = {}
    if submitted.replay_of is not None:
        if not submitted.same_request:
            raise IdempotencyConflict("this Idempotency-Key was used for a different request")
        job = await load(state, submitted.replay_of, owner)
        headers["Idempotent-Replayed"] = "true"
    else:
        state.metrics.submitted.labels(req.model).inc()
        state.estimates.submitted(job)
        log.info("job state", extra={"job_id": job.id, "status": "queued", "model": req.model})
    headers["Location"] = f"/v1/jobs/{job.id}"
    waited = await wait_then_load(state, job, owner, wait, gone, slot_held=True)
    # A new job's position came back with the submission: no second round trip.
    if waited.job is job and submitted.replay_of is None:
        position = submitted.position
    else:
        position = await queue_position(state, waited.job)
    estimate = await state.estimates.of(waited.job, position)
    return JobAnswer(waited.job, position, headers | waited.headers, waited.client_gone, estimate)


async def read(state: State, job_id: str, owner: str, *, wait: float | None, gone: ClientGone) -> JobAnswer:
    """The caller's job, once terminal or after ``wait`` seconds if asked to wait."""
    waited = await wait_then_load(state, await load(state, job_id, owner), owner, wait, gone)
    position = await queue_position(state, waited.job)
    return replace(waited, position=position, estimate=await state.estimates.of(waited.job, position))


@dataclass(frozen=True)
class Cancel:
    job: Job
    requested: bool  # the job was running: it stops at its next step (cancelled at once if not)


async def cancel(state: State, job_id: str, owner: str) -> Cancel:
    """Cancel a queued job at once; ask a running one to stop at its next step."""
    for _ in range(5):
        job = await load(state, job_id, owner)
        if job.terminal:
            raise Conflict(f"job {job_id} is already {job.status.value}")
        if job.status == Status.RUNNING:
            await state.store.request_cancel_async(job_id)
            return Cancel(await load(state, job_id, owner), requested=True)
        cancelled = transition(job, Status.CANCELLED, time.time())
        if await state.store.save_transition_async(job, cancelled):
            state.metrics.finished.labels(job.request.model, "cancelled").inc()
            log.info("job state", extra={"job_id": job_id, "status": "cancelled"})
            return Cancel(cancelled, requested=False)
    raise Conflict(f"job {job_id} changed state repeatedly; retry")


async def image(state: State, job_id: str, index: int, owner: str) -> bytes:
    """Image ``index`` of the caller's succeeded job, as PNG."""
    job = await load(state, job_id, owner)
    if job.status != Status.SUCCEEDED or not 0 <= index < job.image_count:
        raise NotFound(f"job {job_id} has no image {index}")
    data = await state.store.get_image_async(job_id, index)
    if data is None:
        raise NotFound(f"image {index} of job {job_id} has expired")
    return data


async def wait_then_load(
    state: State, job: Job, owner: str, wait: float | None, gone: ClientGone, *, slot_held: bool = False
) -> JobAnswer:
    """With ``Prefer: wait=N``, the job once terminal or after N seconds (RFC 7240). Waiting
    holds no store connection (``service/waiters.py``) but one of the key's waiting places: a
    submission took its own before it was queued (``slot_held``); a read past the bound is
    answered at once, without ``Preference-Applied`` (the preference was not applied: poll).
    A client that goes away stops the wait, and gives its place back, at once."""
    if wait is None:
        return JobAnswer(job)
    applied = {"Preference-Applied": f"wait={wait:g}"}
    if job.terminal or wait <= 0:
        return JobAnswer(job, headers=applied)

    async def finished() -> bool | None:
        try:
            now = await state.store.get_async(job.id)
        except Unavailable:
            return None  # the store is away: the waiter reads again shortly
        # Past its deadline it is as good as over: the read below expires it.
        return now is None or now.terminal or now.past_deadline(time.time())

    try:
        with contextlib.nullcontext() if slot_held else state.waiters.slot(owner):
            if await unless_gone(state.waiters.wait(job.id, wait, finished), gone):
                return JobAnswer(job, headers=applied, client_gone=True)  # nobody to answer: no second read
    except TooManyWaiters:
        return JobAnswer(job)
    return JobAnswer(await load(state, job.id, owner), headers=applied)


async def unless_gone(waiting: Awaitable[None], gone: ClientGone) -> bool:
    """Await ``waiting`` unless the client goes first (then ``waiting`` is cancelled): whether
    it went."""
    wait_task = asyncio.ensure_future(waiting)
    gone_task = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((wait_task, gone_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wait_task, gone_task):
            task.cancel()
        await asyncio.gather(wait_task, gone_task, return_exceptions=True)
    if wait_task.cancelled():
        return True
    wait_task.result()  # its error, if it raised
    return False


async def load(state: State, job_id: str, owner: str) -> Job:
    """The caller's job, expired first if its deadline passed. Another key's job is a 404,
    as if it did not exist: ids must not be probed across keys."""
    while True:
        job = _owned(await state.store.get_async(job_id) if _valid_id(job_id) else None, job_id, owner)
        now = time.time()
        if job.terminal or not job.past_deadline(now):
            return job
        expired = expire(job, now)
        if await state.store.save_transition_async(job, expired):
            state.metrics.finished.labels(job.request.model, "expired").inc()
            log.info("job state", extra={"job_id": job.id, "status": "expired"})
            return expired
        # it moved on meanwhile: read it again


async def queue_position(state: State, job: Job) -> int | None:
    """A queued job's place in its model's queue; else None."""
    if job.status != Status.QUEUED:
        return None
    return await state.store.queue_position_async(job.request.model, job.id, job.request.priority)


def check_admissible(state: State, req: JobRequest, owner: str) -> None:
    """422 for a job this key may never submit: a priority it was not granted, or more work
    than a queue (the model's, or the key's share) may ever hold, which no wait would cure."""
    if req.priority == Priority.HIGH and not state.tenants.may_use_high(owner):
        raise ValidationFailed(
            "this key may not use priority high (DIFFQ_HIGH_PRIORITY_KEYS): use normal or low",
            details=[{"field": "priority", "message": "not granted to this key"}],
        )
    for bound, setting, whose in (
        (state.limits.max_queued_evaluations, "DIFFQ_MAX_QUEUED_EVALUATIONS", "a model's queue"),
        (state.limits.max_queued_evaluations_per_owner, "DIFFQ_MAX_QUEUED_EVALUATIONS_PER_KEY", "one key"),
    ):
        if bound and req.evaluations > bound:
            raise ValidationFailed(
                f"this job is {req.evaluations} denoiser evaluations, more than the {bound} {whose} "
                f"may hold waiting ({setting}): fewer images or steps",
                details=[{"field": "num_images", "message": "the job can never be admitted"}],
            )


def webhook_events(state: State, body: JobCreate, owner: str) -> tuple[str, ...]:
    """The events a job's webhook is sent (empty without one); 422 for a webhook this key may
    not have: it has no secret to sign with, or the URL is a literal address the service may
    not call (a name is checked when delivering, on what it resolves to then)."""
    if body.webhook is None:
        if body.webhook_events is not None:
            raise ValidationFailed(
                "webhook_events needs a webhook",
                details=[{"field": "webhook_events", "message": "given without webhook"}],
            )
        return ()
    if not state.webhook_secrets.for_owner(owner):
        raise ValidationFailed(
            "this key has no webhook secret (DIFFQ_WEBHOOK_SECRETS), so its webhooks could not be signed",
            details=[{"field": "webhook", "message": "no webhook secret for this key"}],
        )
    host = check_url(body.webhook).hostname or ""
    if not state.settings.webhook_allow_private:
        try:
            why = refusal(host)
        except ValueError:  # a name, not an address: checked at delivery
            why = None
        if why is not None:
            raise ValidationFailed(
                f"webhook: {host} is a {why} address (DIFFQ_WEBHOOK_ALLOW_PRIVATE is off)",
                details=[{"field": "webhook", "message": f"a {why} address"}],
            )
    chosen = set(body.webhook_events or DEFAULT_WEBHOOK_EVENTS)
    return tuple(e for e in WEBHOOK_EVENTS if e in chosen)


def request_fingerprint(job: Job, given_seed: int | None) -> str:
    """What an Idempotency-Key's retries must repeat: the resolved request (defaults filled, so
    spelling a default out is the same request), with the seed as given (a drawn one differs
    on every try), and the webhook."""
    resolved = job.request.to_dict() | {"seed": given_seed}
    if job.webhook is not None:
        resolved |= {"webhook": job.webhook, "webhook_events": list(job.webhook_events)}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


def maybe_accepted(error: Unavailable, job_id: str) -> Unavailable:
    """The 503 for a submission the store did not answer: the script may have run, so the
    client gets the id it would have had, to look it up rather than guess."""
    location = f"/v1/jobs/{job_id}"
    return Unavailable(
        f"{error.message}; the job may have been accepted: GET {location} tells (404 if it was not)",
        {**(error.details or {}), "job_id": job_id},
        retry_after=error.retry_after,
        headers={"Location": location},
    )


def _owned(job: Job | None, job_id: str, owner: str) -> Job:
    """The job if it exists and is the caller's; otherwise a 404, the same for both."""
    if job is None or job.owner != owner:
        raise NotFound(f"job {job_id} not found (unknown or expired)")
    return job


def _valid_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
