"""The HTTP gateway: validates, queues and reports jobs. Waits on a worker only when a client
asks to (``Prefer: wait=N``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffq import __version__
from diffq.errors import (
    Conflict,
    IdempotencyConflict,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from diffq.jobs import ANONYMOUS, Job, JobRequest, Priority, Status, expire, new_job_id, transition
from diffq.metrics import exposition
from diffq.store import Limits, RedisStore
from model_store.manifest import Manifest
from model_store.store import ModelStore
from service.config import GatewaySettings
from service.contract import exact_bounds
from service.metrics import GatewayMetrics, RequestMetrics
from service.requests import resolve
from service.schemas import ErrorBody, Health, JobCreate, JobView, ModelList
from service.views import job_view, model_view
from service.waiters import TooManyWaiters, Waiters

log = logging.getLogger("diffq.gateway")

# Every error status the API answers, described once: each route's `responses` are derived
# from this table (error_responses), so a status means the same thing on every route.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not parseable (not JSON, or not UTF-8)",
    401: "Missing or unknown API key",
    404: "Unknown or expired job, or another key's",
    408: "The request's headers or body did not arrive in time (`request_timeout`); the connection is closed",
    409: "The job is already terminal, or the Idempotency-Key was used for another request",
    413: "Request body too large",
    422: "Invalid request; details name the field",
    429: "Rate limit, in-flight job limit or waiting-request bound (`too_many_waiters`, with "
    "`Prefer: wait`) of this key; see Retry-After",
    431: "Request line and headers too large, or too many header fields "
    "(`request_header_fields_too_large`); the connection is closed",
    503: "The queue is full, the job store is unavailable, or this gateway process is past its "
    "connection limit (`overloaded`); see Retry-After",
}
# Answered on every route, whatever it does: the protocol layer (service/limits.py) sends
# 408, 431 and the `overloaded` 503 before routing, and the body-size middleware sends 413.
PROTOCOL_ERRORS = (408, 413, 431, 503)
RETRY_AFTER_HEADER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
_RETRY_AFTER_STATUSES = (429, 503)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries for ``codes`` and PROTOCOL_ERRORS, from ERROR_DESCRIPTIONS."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *PROTOCOL_ERRORS}):
        out[code] = {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]}
        if code in _RETRY_AFTER_STATUSES:
            out[code]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
    return out


# A submission the job store did not answer (a timeout, a connection lost mid-call) may have
# been accepted all the same: its 503 names the job, which the gateway chose before the call.
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 401, 404, 409, 422, 429),
    503: {
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
# 422 is listed wherever a route has parameters: FastAPI would otherwise document its own
# validation body, which this API never sends (errors are ErrorBody).
JOB_RESPONSES = error_responses(401, 404, 422)
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The PNG"},
    **error_responses(401, 404, 422),
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Cancelled: the job was queued, and is now `cancelled`"},
    202: {
        "model": JobView,
        "description": "Cancel requested: the job is running and stops at its next step "
        "(`cancel_requested` is true; it ends `cancelled`, or `succeeded` if it was on its last step)",
    },
    **error_responses(401, 404, 409, 422),
}
MODELS_RESPONSES = error_responses(401)
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


class State:
    """What the routes need, built once at start-up."""

    def __init__(self, settings: GatewaySettings, store: RedisStore, models: dict[str, Manifest]) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.keys = settings.keys
        self.tenants = settings.tenants
        self.limits = Limits(
            settings.max_jobs_in_flight_per_key,
            settings.max_queued_evaluations,
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            settings.max_queued_evaluations_per_key,
        )
        self.metrics = GatewayMetrics()
        self.waiters = Waiters(store, settings.max_waiters_per_key, settings.max_waiters)
        self.metrics.watch_queue(store, list(models), settings.worker_liveness_seconds)
        self.default_model = settings.default_model or next(iter(models))
        if self.default_model not in models:
            raise ValueError(f"default model {self.default_model!r} is not in the model store")


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool,
# a hop per dependency per request, and these do no I/O.
async def get_state(request: Request) -> State:
    state: State = request.app.state.diffq
    return state


StateDep = Annotated[State, Depends(get_state)]


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def get_owner(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """Who is asking: the name of their API key (everyone is ``anonymous`` with auth off)."""
    if state.settings.auth == "off":
        return ANONYMOUS
    token = credentials.credentials if credentials else None
    name = state.keys.identify(token) if token else None
    if name is None:
        raise Unauthorized("missing or unknown API key; send Authorization: Bearer <key>")
    return name


OwnerDep = Annotated[str, Depends(get_owner)]
PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="`wait=N`: hold the answer until the job is terminal or N seconds pass "
        "(at most the server's limit, 60 s by default), so clients need not poll. Past the key's "
        "bound of waiting requests a submission is 429 `too_many_waiters` (nothing queued) and a read "
        "is answered at once without `Preference-Applied`. Preferences the server cannot read are "
        "ignored (RFC 7240).",
    ),
]


def wait_preference(prefer: str | None, max_wait: float) -> float | None:
    """Seconds to wait from a ``Prefer`` header (RFC 7240), capped at ``max_wait``; None when
    it asks for no wait or names one that cannot be read (a preference is a hint: never an
    error). Only the first 1,000 characters are looked at."""
    for preference in (prefer or "")[:1000].split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        if math.isnan(seconds) or seconds < 0:
            return None
        return min(seconds, max_wait)
    return None


async def wait_slot(state: StateDep, owner: OwnerDep, prefer: PreferHeader = None) -> AsyncIterator[None]:
    """A submission's waiting place (``Prefer: wait=N``, N > 0), taken before it is queued: past
    the bound the 429 means nothing was done, so a client's retry cannot queue the job twice."""
    with state.waiters.slot(owner) if wait_preference(prefer, state.settings.max_wait_seconds) else _no_slot:
        yield


_no_slot = contextlib.nullcontext()
WaitSlotDep = Annotated[None, Depends(wait_slot)]


async def _wait_then_load(
    state: State, job: Job, owner: str, prefer: str | None, response: Response, *, slot_held: bool = False
) -> Job:
    """With ``Prefer: wait=N``, the job once terminal or after N seconds (RFC 7240). Waiting
    holds no store connection (``service/waiters.py``) but one of the key's waiting places: a
    submission took its own before it was queued (``slot_held``); a read past the bound is
    answered at once, without ``Preference-Applied`` (the preference was not applied: poll)."""
    wait = wait_preference(prefer, state.settings.max_wait_seconds)
    if wait is None:
        return job
    if job.terminal or wait <= 0:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
        return job

    async def finished() -> bool | None:
        try:
            now = await state.store.get_async(job.id)
        except Unavailable:
            return None  # the store is away: the waiter reads again shortly
        # Past its deadline it is as good as over: the read below expires it.
        return now is None or now.terminal or now.past_deadline(time.time())

    try:
        slot = _no_slot if slot_held else state.waiters.slot(owner)
        with slot:
            response.headers["Preference-Applied"] = f"wait={wait:g}"
            await state.waiters.wait(job.id, wait, finished)
    except TooManyWaiters:
        return job
    return await _load_async(state, job.id, owner)


def request_fingerprint(request: JobRequest, given_seed: int | None) -> str:
    """What an Idempotency-Key's retries must repeat: the resolved request (defaults filled, so
    spelling a default out is the same request), with the seed as given (a drawn one differs
    on every try)."""
    resolved = request.to_dict() | {"seed": given_seed}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retries with the same key (per API key, within the result TTL) return the same job.",
    ),
]


def create_app(settings: GatewaySettings, store: RedisStore | None = None) -> FastAPI:
    # Every model in the store, each at its newest version: the one its workers load.
    model_store = ModelStore(settings.model_store)
    names = dict.fromkeys(m.manifest.name for m in model_store.models())
    models = {name: model_store.get(name).manifest for name in names}
    if not models:
        raise ValueError(f"no models found in {settings.model_store}")
    store = store or RedisStore(
        settings.redis_url, settings.key_prefix, settings.result_ttl_seconds, settings.redis_timeout_seconds
    )
    state = State(settings, store, models)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.waiters.start()  # the one subscription that wakes this process's waiting requests
        try:
            yield
        finally:
            await state.waiters.close()

    app = FastAPI(
        title="diffq",
        version=__version__,
        description="Submit diffusion generation jobs, poll them, fetch the images.",
        lifespan=lifespan,
    )
    app.state.diffq = state
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # the committed document's form, bounds exact
        if app.openapi_schema is None:
            app.openapi_schema = exact_bounds(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: sees 413s too
    _install_error_handlers(app)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.post("/v1/jobs", status_code=202, response_model=JobView, responses=SUBMIT_RESPONSES, tags=["jobs"])
    async def submit_job(
        body: JobCreate,
        state: StateDep,
        owner: OwnerDep,
        response: Response,
        _slot: WaitSlotDep,
        idempotency_key: IdempotencyKey = None,
        prefer: PreferHeader = None,
    ) -> Response:
        """Queue a generation job. Answers at once with the job and its Location."""
        # async: the submission, the busiest path, and a client's wait run on the event loop
        # with the store's asyncio connection; only rare steps (expiring, positions) use threads.
        settings = state.settings
        req = resolve(body, state.models, state.default_model)
        _check_admissible(state, req, owner)
        job = Job(id=new_job_id(), request=req, status=Status.QUEUED, created_at=time.time(), owner=owner)
        fingerprint = request_fingerprint(req, body.seed) if idempotency_key is not None else ""
        try:
            limits = replace(state.limits, weight=state.tenants.weight(owner))
            submitted = await state.store.submit_async(job, limits, idempotency_key, fingerprint)
        except Unavailable as e:
            if RedisStore.fault(e).maybe_applied:
                raise _maybe_accepted(e, job.id) from e
            raise
        if submitted.replay_of is not None:
            if not submitted.same_request:
                raise IdempotencyConflict("this Idempotency-Key was used for a different request")
            job = await _load_async(state, submitted.replay_of, owner)
            response.headers["Idempotent-Replayed"] = "true"
        else:
            state.metrics.submitted.labels(req.model).inc()
            log.info("job state", extra={"job_id": job.id, "status": "queued", "model": req.model})
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        waited = await _wait_then_load(state, job, owner, prefer, response, slot_held=True)
        # A new job's position came back with the submission: no second round trip.
        if waited is job and submitted.replay_of is None:
            position = submitted.position
        else:
            position = await _position_async(state, waited)
        return _json(job_view(waited, position=position, base=settings.public_base_url), response, 202)

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=JOB_RESPONSES, tags=["jobs"])
    async def get_job(
        job_id: str, state: StateDep, owner: OwnerDep, response: Response, prefer: PreferHeader = None
    ) -> Response:
        """The job's status, progress, timings and image URLs."""
        job = await _wait_then_load(state, await _load_async(state, job_id, owner), owner, prefer, response)
        view = job_view(job, position=await _position_async(state, job), base=state.settings.public_base_url)
        return _json(view, response)

    @app.get(
        "/v1/jobs/{job_id}/images/{index}",
        responses=IMAGE_RESPONSES,
        response_class=Response,
        tags=["jobs"],
    )
    def get_image(job_id: str, index: int, state: StateDep, owner: OwnerDep) -> Response:
        """One image of a succeeded job, as PNG."""
        job = _load(state, job_id, owner)
        if job.status != Status.SUCCEEDED or not 0 <= index < job.image_count:
            raise NotFound(f"job {job_id} has no image {index}")
        data = state.store.get_image(job_id, index)
        if data is None:
            raise NotFound(f"image {index} of job {job_id} has expired")
        return Response(
            content=data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.delete("/v1/jobs/{job_id}", response_model=JobView, responses=CANCEL_RESPONSES, tags=["jobs"])
    def cancel_job(job_id: str, state: StateDep, owner: OwnerDep, response: Response) -> JobView:
        """Cancel a queued job at once, or a running one at its next step (202 until then)."""
        for _ in range(5):
            job = _load(state, job_id, owner)
            if job.terminal:
                raise Conflict(f"job {job_id} is already {job.status.value}")
            if job.status == Status.RUNNING:
                state.store.request_cancel(job_id)
                response.status_code = 202
                job = _load(state, job_id, owner)
                return job_view(job, position=None, base=state.settings.public_base_url)
            cancelled = transition(job, Status.CANCELLED, time.time())
            if state.store.save_transition(job, cancelled):
                state.metrics.finished.labels(job.request.model, "cancelled").inc()
                log.info("job state", extra={"job_id": job_id, "status": "cancelled"})
                return job_view(cancelled, position=None, base=state.settings.public_base_url)
        raise Conflict(f"job {job_id} changed state repeatedly; retry")

    @app.get("/v1/models", response_model=ModelList, responses=MODELS_RESPONSES, tags=["models"])
    def list_models(state: StateDep, _owner: OwnerDep) -> ModelList:
        """The served models: kind (what condition a request sends), classes, sizes, samplers,
        step limits and defaults."""
        return ModelList(
            default_model=state.default_model, models=[model_view(m) for m in state.models.values()]
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics(state: StateDep) -> Response:
        """Prometheus exposition: this gateway's families (all processes) and the queue."""
        body, content_type = exposition(state.metrics.registry())
        return Response(content=body, media_type=content_type)

    @app.get("/livez", response_model=Health, responses=error_responses(), tags=["health"])
    def livez() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses=READY_RESPONSES, tags=["health"])
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
        body = Health(
            status="ready" if redis_ok else "not ready", checks={"redis": redis_ok}, workers=workers
        )
        return JSONResponse(body.model_dump(), status_code=200 if redis_ok else 503)


def _load(state: State, job_id: str, owner: str) -> Job:
    """The caller's job, expired first if its deadline passed. Another key's job is a 404,
    as if it did not exist: ids must not be probed across keys."""
    job = _owned(state.store.get(job_id) if _valid_id(job_id) else None, job_id, owner)
    now = time.time()
    if not job.terminal and job.past_deadline(now):
        expired = expire(job, now)
        if state.store.save_transition(job, expired):
            state.metrics.finished.labels(job.request.model, "expired").inc()
            log.info("job state", extra={"job_id": job.id, "status": "expired"})
            return expired
        return _load(state, job_id, owner)  # it moved on meanwhile: read it again
    return job


async def _load_async(state: State, job_id: str, owner: str) -> Job:
    """``_load`` with the read on the event loop; a job past its deadline is expired by
    ``_load`` itself, in a thread."""
    job = _owned(await state.store.get_async(job_id) if _valid_id(job_id) else None, job_id, owner)
    if not job.terminal and job.past_deadline(time.time()):
        return await run_in_threadpool(_load, state, job_id, owner)
    return job


def _maybe_accepted(error: Unavailable, job_id: str) -> Unavailable:
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


async def _position_async(state: State, job: Job) -> int | None:
    """``_position``; only a queued job's needs Redis (in a thread)."""
    return await run_in_threadpool(_position, state, job) if _queued(job) else None


def _valid_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def _queued(job: Job) -> bool:
    return job.status == Status.QUEUED


def _position(state: State, job: Job) -> int | None:
    if not _queued(job):
        return None
    return state.store.queue_position(job.request.model, job.id, job.request.priority)


def _check_admissible(state: State, req: JobRequest, owner: str) -> None:
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


def _json(view: JobView, headers_from: Response, status: int = 200) -> Response:
    """``view`` as the answer, serialized once: FastAPI would validate a returned model against
    ``response_model`` again first (``response_model`` still documents the route). Headers the
    route set on its ``Response`` parameter are carried over."""
    out = Response(view.model_dump_json(), status_code=status, media_type="application/json")
    out.headers.raw.extend(headers_from.headers.raw)
    return out


def _error_response(status: int, body: dict[str, Any], retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        resp = _error_response(exc.status, exc.to_dict(), exc.retry_after)
        resp.headers.update(exc.headers)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Request bodies are flat: the field is the first location part after "body" (later
        # parts name union members, such as "float" in StrictFloat | StrictInt).
        details = [
            {"field": str(e["loc"][1]) if len(e["loc"]) > 1 else "body", "message": e["msg"]}
            for e in exc.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return _error_response(422, {"type": "validation_error", "message": message, "details": details})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        resp = _error_response(exc.status_code, {"type": kind, "message": str(exc.detail)})
        resp.headers.update(exc.headers or {})  # a 405's Allow, among others
        return resp

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RedisStore.UNREACHABLE):  # a store call not wrapped by the store: still a 503
            log.warning(
                "untranslated store error", extra={"error": type(exc).__name__, "detail": str(exc)[:500]}
            )
            return await service_error(request, RedisStore.fault(exc).unavailable())
        log.exception("unhandled error")
        return _error_response(500, {"type": "internal_error", "message": "internal error"})


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_large = PayloadTooLarge(f"request body exceeds {self.max_bytes} bytes")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _error_response(413, too_large.to_dict())(scope, receive, send)
            return
        # Read the body here, up to the bound (chunked bodies carry no length): past it the
        # answer is this 413, not a parse error from deep in the framework.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await _error_response(413, too_large.to_dict())(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever comes next."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
