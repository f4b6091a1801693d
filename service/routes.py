"""The gateway's routes: each reads its request (dependencies do the auth and the headers),
calls an operation (``service/job_ops.py``) and builds the answer. What each route may answer
is documented from the error table (``service/errors.py``)."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from diffq.errors import (
    Conflict,
    NotFound,
    RateLimited,
    ServiceError,
    TooManyJobs,
    TooMuchQueuedWork,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from diffq.metrics import exposition
from service import job_ops, openai_images
from service.deps import (
    ClientGoneDep,
    IdempotencyKey,
    LastEventId,
    MetricsAccess,
    OwnerDep,
    StateDep,
    SubmitterDep,
    WaitDep,
    client_gone,
)
from service.errors import RETRY_AFTER_HEADER, error_responses, json_error_responses
from service.events import EVENT_SCHEMA, EventId, EventStreamResponse, job_events
from service.openai_errors import OpenAIRoute, openai_error_responses
from service.schemas import (
    ErrorBody,
    Health,
    ImageGenerationCreate,
    ImagesResponse,
    JobCreate,
    JobView,
    ModelList,
)
from service.state import State
from service.submit_route import SubmitRoute
from service.views import job_view, model_view
from service.waiters import TooManyWaiters

# A submission the job store did not answer (a timeout, a connection lost mid-call) may have
# been accepted all the same: its 503 names the job, which the gateway chose before the call.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(
        "bad_request",
        Unauthorized,
        NotFound,
        Conflict,
        ValidationFailed,
        RateLimited,
        TooManyJobs,
        TooMuchQueuedWork,
    ),
    Unavailable.status: {
        "model": ErrorBody,
        "description": "The queue is full, the job store is unavailable or the gateway process is "
        "overloaded (`details.reason`: `full`, `unreachable`, `timeout`, ...); see Retry-After. When the "
        "store did not answer, the job may have been accepted anyway: `details.job_id` and `Location` "
        "name it. GET it (404: it was not accepted), or retry with the same Idempotency-Key, which "
        "returns it if it was.",
        "headers": {
            "Retry-After": RETRY_AFTER_HEADER,
            "Location": {
                "description": "Only when the outcome is unknown: the job's URL, to look it up",
                "schema": {"type": "string"},
            },
        },
    },
}
# ValidationFailed is listed wherever a route has parameters: FastAPI would otherwise document
# its own validation body, which this API never sends (errors are ErrorBody).
JOB_RESPONSES = error_responses(Unauthorized, NotFound, ValidationFailed)
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The PNG"},
    **error_responses(Unauthorized, NotFound, ValidationFailed),
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Cancelled: the job was queued, and is now `cancelled`"},
    202: {
        "model": JobView,
        "description": "Cancel requested: the job is running and stops at its next step "
        "(`cancel_requested` is true; it ends `cancelled`, or `succeeded` if it was on its last step)",
    },
    **error_responses(Unauthorized, NotFound, Conflict, ValidationFailed),
}


EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA}},
        "description": "Server-Sent Events: `job` (the job view) when the stream opens and at every "
        'status change, `progress` (`{"step", "total"}`) at every step, a `: heartbeat` comment '
        "while nothing happens; the stream ends after the `job` event of a terminal status (or after "
        "DIFFQ_EVENT_STREAM_SECONDS: resume with Last-Event-ID)",
    },
    **json_error_responses(Unauthorized, NotFound, ValidationFailed, TooManyWaiters),
}
MODELS_RESPONSES = error_responses(Unauthorized)
# /readyz's own 503 is a Health body (not ready); the protocol layer's is an error body.
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(),
    503: {
        "description": "Not ready (a Health body: the job store does not answer), or this gateway "
        "process is past its connection limit (an error body, `overloaded`, with Retry-After)",
        "headers": {"Retry-After": RETRY_AFTER_HEADER},
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/Health"},
                        {"$ref": "#/components/schemas/ErrorBody"},
                    ]
                }
            }
        },
    },
}

router = APIRouter()
# POST /v1/jobs alone: its plain requests skip FastAPI's per-request solving (service/submit_route.py).
submit_router = APIRouter(route_class=SubmitRoute)
# OpenAI-compatible routes: their errors in OpenAI's shape (service/openai_errors.py).
openai_router = APIRouter(route_class=OpenAIRoute)


@submit_router.post(
    "/v1/jobs", status_code=202, response_model=JobView, responses=SUBMIT_RESPONSES, tags=["jobs"]
)
async def submit_job(
    request: Request, body: JobCreate, who: SubmitterDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Queue a generation job. Answers at once with the job and its Location."""
    # async: the submission, the busiest path, and a client's wait run on the event loop
    # with the store's asyncio connection; only rare steps (expiring, positions) use threads.
    state, owner, wait = who.state, who.owner, who.wait
    # With Prefer: wait, its waiting place is taken before the job is queued: past the bound the
    # 429 means nothing was done, so a client's retry cannot queue the job twice.
    with state.waiters.slot(owner) if wait else contextlib.nullcontext():
        answer = await job_ops.submit(
            state, body, owner, idempotency_key=idempotency_key, wait=wait, gone=await client_gone(request)
        )
    return _job_response(state, answer, 202)


@router.get("/v1/jobs/{job_id}", response_model=JobView, responses=JOB_RESPONSES, tags=["jobs"])
async def get_job(
    job_id: str, state: StateDep, owner: OwnerDep, wait: WaitDep, gone: ClientGoneDep
) -> Response:
    """The job's status, progress, timings and image URLs."""
    return _job_response(state, await job_ops.read(state, job_id, owner, wait=wait, gone=gone))


@router.get(
    "/v1/jobs/{job_id}/images/{index}", responses=IMAGE_RESPONSES, response_class=Response, tags=["jobs"]
)
async def get_image(job_id: str, index: int, state: StateDep, owner: OwnerDep) -> Response:
    """One image of a succeeded job, as PNG."""
    data = await job_ops.image(state, job_id, index, owner)
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/v1/jobs/{job_id}/events",
    status_code=200,
    responses=EVENTS_RESPONSES,
    response_class=EventStreamResponse,
    tags=["jobs"],
)
async def job_events_stream(
    job_id: str, state: StateDep, owner: OwnerDep, last_event_id: LastEventId = None
) -> Response:
    """The job's status changes and steps as they happen (Server-Sent Events). The stream holds
    one of the key's waiting places (429 `too_many_waiters` past the bound, as `Prefer: wait`)."""
    last = EventId.parse(last_event_id) if last_event_id else None
    await job_ops.load(state, job_id, owner)  # 404 before anything is held
    with contextlib.ExitStack() as places:
        places.enter_context(state.waiters.slot(owner, instead=f"poll GET /v1/jobs/{job_id}", kind="stream"))
        listener = places.enter_context(state.waiters.listen(job_id))
        # Held until the response is over: the response gives them back.
        held = places.pop_all()
    return EventStreamResponse(job_events(state, job_id, owner, listener, last), on_close=held.close)


@router.delete("/v1/jobs/{job_id}", response_model=JobView, responses=CANCEL_RESPONSES, tags=["jobs"])
async def cancel_job(job_id: str, state: StateDep, owner: OwnerDep) -> Response:
    """Cancel a queued job at once, or a running one at its next step (202 until then)."""
    cancel = await job_ops.cancel(state, job_id, owner)
    return _job_response(state, job_ops.JobAnswer(cancel.job), 202 if cancel.requested else 200)


@openai_router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    responses=openai_error_responses(),
    tags=["openai"],
)
async def generate_images(
    body: ImageGenerationCreate,
    state: StateDep,
    owner: OwnerDep,
    gone: ClientGoneDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's Images API: queue a job as POST /v1/jobs does, wait for it (up to the server's
    DIFFQ_MAX_WAIT_SECONDS, holding one of the key's waiting places) and answer its images.
    Errors in OpenAI's shape."""
    generated = await openai_images.generate(state, body, owner, idempotency_key=idempotency_key, gone=gone)
    body_json = generated.body.model_dump_json(exclude_none=True)
    return Response(body_json, media_type="application/json", headers=generated.headers)


@router.get("/v1/models", response_model=ModelList, responses=MODELS_RESPONSES, tags=["models"])
async def list_models(state: StateDep, _owner: OwnerDep) -> ModelList:
    """The served models: kind (what condition a request sends), classes, sizes, samplers,
    step limits and defaults."""
    return ModelList(default_model=state.default_model, models=[model_view(m) for m in state.models.values()])


@router.get("/metrics", include_in_schema=False)
def metrics(state: StateDep, _access: MetricsAccess) -> Response:
    """Prometheus exposition: this gateway's families (all processes) and the queue (read from
    the store now, hence a thread)."""
    body, content_type = exposition(state.metrics.registry())
    return Response(content=body, media_type=content_type)


@router.get("/livez", response_model=Health, responses=error_responses(), tags=["health"])
async def livez() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=READY_RESPONSES, tags=["health"])
def readyz(state: StateDep) -> JSONResponse:
    """Can take jobs: Redis answers. Live workers are reported, not required, so a gateway
    stays ready while workers scale from zero on the backlog it queues."""
    redis_ok = state.store.ping()
    workers: dict[str, int] = {}
    if redis_ok:
        try:
            for name in state.models:
                workers[name] = state.store.live_workers(name, state.settings.worker_liveness_seconds)
        except ServiceError:
            redis_ok = False
    body = Health(status="ready" if redis_ok else "not ready", checks={"redis": redis_ok}, workers=workers)
    return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)


def _job_response(state: State, answer: job_ops.JobAnswer, status: int = 200) -> Response:
    """The job's view as the answer, serialized once: FastAPI would validate a returned model
    against ``response_model`` again first (``response_model`` still documents the route)."""
    view = job_view(answer.job, answer.position, state.settings.public_base_url, answer.estimate)
    return Response(
        view.model_dump_json(), status_code=status, media_type="application/json", headers=answer.headers
    )
