"""Errors as the gateway answers them: one table from error type to HTTP status and what the
status means, the OpenAPI ``responses`` derived from it, and the handlers that turn every error
into ``{"error": {"type", "message", "details"}}``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from diffq.errors import (
    Conflict,
    IdempotencyConflict,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
    TooManyJobs,
    TooMuchQueuedWork,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from diffq.store import RedisStore
from service.schemas import ErrorBody
from service.waiters import TooManyWaiters

log = logging.getLogger("diffq.gateway")


@dataclass(frozen=True)
class ErrorStatus:
    """One HTTP status the API answers with an error body: what it means on every route, and
    the error ``type``s sent with it."""

    description: str
    types: tuple[str, ...]
    retry_after: bool = False  # the answer carries Retry-After


# Every error status the API documents. A ServiceError carries its own status (the core sets it,
# workers store the type); tests/unit/test_errors.py keeps each class's type in its status's row.
# The protocol layer's own answers (service/limits.py) are listed by type, having no class.
ERRORS: dict[int, ErrorStatus] = {
    400: ErrorStatus("The body is not parseable (not JSON, or not UTF-8)", ("bad_request",)),
    401: ErrorStatus("Missing or unknown API key", (Unauthorized.type,)),
    404: ErrorStatus("Unknown or expired job, or another key's", (NotFound.type,)),
    408: ErrorStatus(
        "The request's headers or body did not arrive in time (`request_timeout`); the connection is closed",
        ("request_timeout",),
    ),
    409: ErrorStatus(
        "The job is already terminal, or the Idempotency-Key was used for another request",
        (Conflict.type, IdempotencyConflict.type),
    ),
    413: ErrorStatus("Request body too large", (PayloadTooLarge.type,)),
    422: ErrorStatus("Invalid request; details name the field", (ValidationFailed.type,)),
    429: ErrorStatus(
        "Rate limit, in-flight job limit, waiting-work share (`too_much_queued_work`) or "
        "waiting-request bound (`too_many_waiters`, with `Prefer: wait`) of this key; see Retry-After",
        (RateLimited.type, TooManyJobs.type, TooMuchQueuedWork.type, TooManyWaiters.type),
        retry_after=True,
    ),
    431: ErrorStatus(
        "Request line and headers too large, or too many header fields "
        "(`request_header_fields_too_large`); the connection is closed",
        ("request_header_fields_too_large",),
    ),
    503: ErrorStatus(
        "The queue is full, the job store is unavailable, or this gateway process is past its "
        "connection limit (`overloaded`); see Retry-After",
        (Unavailable.type, Overloaded.type),
        retry_after=True,
    ),
}
STATUS_OF: dict[str, int] = {kind: status for status, row in ERRORS.items() for kind in row.types}

# Answered on every route, whatever it does: the protocol layer (service/limits.py) sends
# 408, 431 and the `overloaded` 503 before routing, and the body-size middleware sends 413.
PROTOCOL_ERRORS: tuple[type[ServiceError] | str, ...] = (
    "request_timeout",
    PayloadTooLarge,
    "request_header_fields_too_large",
    "overloaded",
)
RETRY_AFTER_HEADER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}


def error_responses(*errors: type[ServiceError] | str) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` entries for the errors it answers (classes, or the types of answers
    that have none) and PROTOCOL_ERRORS, each status described by its row of ERRORS."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(
        {STATUS_OF[e if isinstance(e, str) else e.type] for e in (*errors, *PROTOCOL_ERRORS)}
    ):
        row = ERRORS[status]
        out[status] = {"model": ErrorBody, "description": row.description}
        if row.retry_after:
            out[status]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
    return out


def json_error_responses(*errors: type[ServiceError] | str) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` for a route whose own answer is not JSON (an event stream): FastAPI
    would document the error bodies in the route's media type, so they name theirs."""
    out = error_responses(*errors)
    for entry in out.values():
        del entry["model"]
        entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return out


def error_response(status: int, body: dict[str, Any], retry_after: float | None = None) -> JSONResponse:
    """An error body (``{"error": body}``) with Retry-After in whole seconds, at least 1."""
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    """The answer for a ServiceError: its status, its body, its headers (a 401 names the scheme)."""
    resp = error_response(exc.status, exc.to_dict(), exc.retry_after)
    resp.headers.update(exc.headers)
    if exc.status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Request bodies are flat: the field is the first location part after "body" (later
    # parts name union members, such as "float" in StrictFloat | StrictInt).
    details = [
        {"field": str(e["loc"][1]) if len(e["loc"]) > 1 else "body", "message": e["msg"]}
        for e in exc.errors()
    ]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, {"type": ValidationFailed.type, "message": message, "details": details})


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = {400: "bad_request", 404: NotFound.type, 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    resp = error_response(exc.status_code, {"type": kind, "message": str(exc.detail)})
    resp.headers.update(exc.headers or {})  # a 405's Allow, among others
    return resp


async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RedisStore.UNREACHABLE):  # a store call not wrapped by the store: still a 503
        log.warning("untranslated store error", extra={"error": type(exc).__name__, "detail": str(exc)[:500]})
        return service_error_response(RedisStore.fault(exc).unavailable())
    log.exception("unhandled error")
    return error_response(500, {"type": "internal_error", "message": "internal error"})


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app raises answered as an error body: ServiceErrors by their status,
    FastAPI's validation as 422, routing's as 404/405, anything else as 500 (logged)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
