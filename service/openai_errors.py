"""Errors in OpenAI's shape, for the OpenAI-compatible routes only
(``{"error": {"message", "type", "param", "code"}}``), at the statuses OpenAI's SDKs map to their
exceptions: 400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 409 ConflictError,
429 RateLimitError, 5xx InternalServerError. Every other route keeps the service's own error body.

``OpenAIRoute`` is the route class that answers them: whatever the route, its dependencies or
its body's validation raise is turned into an ``OpenAIError`` here, in one place. The protocol
layer's answers (408, 413, 431 and the ``overloaded`` 503, sent before any route runs) keep the
service's body; the SDK reads either (it takes ``error.message``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from diffq.errors import ServiceError, Unauthorized, ValidationFailed
from diffq.store import RedisStore
from service.errors import RETRY_AFTER_HEADER, error_responses
from service.schemas import OpenAIErrorBody

log = logging.getLogger("diffq.gateway")

# OpenAI's `type` by status; `code` carries the finer reason.
_TYPES = {429: "requests"}
# Our request fields under the names the Images API gives them.
_PARAMS = {"width": "size", "height": "size", "num_images": "n"}
# Tells OpenAI's SDKs not to retry (they retry 408, 409, 429 and 5xx by default): sent where a
# retry would queue the same work again while the first job still runs or has already failed.
NO_RETRY = {"x-should-retry": "false"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.job_id = job_id
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.job_id is not None:
            body["job_id"] = self.job_id
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    """A 400 naming the request field at fault."""
    return OpenAIError(400, f"{param}: {message}", param=param, code=code)


def from_service_error(exc: ServiceError) -> OpenAIError:
    """A ServiceError at the status the SDK expects: validation is a 400 (not our 422), a 401
    says `invalid_api_key`; the rest keep their status, with our type as `code`. Retry-After,
    Location and the job a 503 may have queued are kept."""
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    details = exc.details
    job_id = details.get("job_id") if isinstance(details, dict) else None
    if isinstance(exc, ValidationFailed):
        fields = [d.get("field") for d in details] if isinstance(details, list) else []
        param = _PARAMS.get(str(fields[0]), str(fields[0])) if fields else None
        return OpenAIError(400, exc.message, param=param, code="invalid_value", headers=headers)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
        return OpenAIError(401, exc.message, code="invalid_api_key", headers=headers)
    if job_id is not None or exc.status == 409:  # queued, perhaps (a retry could queue it twice),
        headers |= NO_RETRY  # or a conflict no retry resolves
    return OpenAIError(exc.status, exc.message, code=exc.type, job_id=job_id, headers=headers)


def from_validation(exc: RequestValidationError) -> OpenAIError:
    """The body's first fault, as OpenAI words it: an unknown field is `unknown_parameter`."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid body", "type": ""}
    loc = first["loc"]
    param = str(loc[1]) if len(loc) > 1 else None
    if first["type"] == "extra_forbidden" and param is not None:
        return invalid(param, f"unrecognized request argument supplied: {param}", "unknown_parameter")
    if first["type"] == "missing" and param is not None:
        return invalid(param, "missing required parameter", "missing_required_parameter")
    if param is None:
        return OpenAIError(
            400, f"the body is not a JSON object of parameters: {first['msg']}", code="invalid_json"
        )
    return invalid(param, str(first["msg"]))


def as_openai_error(exc: Exception) -> OpenAIError:
    """Any error a route raised, as the answer to send."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return from_validation(exc)
    if isinstance(exc, ServiceError):
        return from_service_error(exc)
    if isinstance(exc, StarletteHTTPException):  # a body that is not JSON or not UTF-8, say
        return OpenAIError(
            exc.status_code, str(exc.detail), code="bad_request" if exc.status_code == 400 else None
        )
    if isinstance(exc, RedisStore.UNREACHABLE):  # a store call the store did not wrap: still a 503
        return from_service_error(RedisStore.fault(exc).unavailable())
    log.exception("unhandled error")
    return OpenAIError(500, "internal error", code="internal_error")


class OpenAIRoute(APIRoute):
    """A route whose every error (its dependencies', its body's, its own) answers in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return as_openai_error(exc).response()

        return route


# What the Images API answers besides its images, and why; the OpenAPI responses come from it.
OPENAI_ERRORS: dict[int, str] = {
    400: "Invalid request (`param` names the field): not JSON, an unknown parameter "
    "(`unknown_parameter`), a bad value, a size the model does not serve, an OpenAI parameter at "
    "a value this service does not offer, or a model that is not text-to-image",
    401: "Missing or unknown API key (`invalid_api_key`)",
    404: "Unknown model (`model_not_found`): GET /v1/models lists them",
    409: "The Idempotency-Key was used for another request (`idempotency_conflict`), or the job was "
    "cancelled through DELETE /v1/jobs/{id} (`job_cancelled`)",
    429: "The key's rate limit, in-flight job limit, share of the queue or bound of waiting requests "
    "(`code` says which; nothing was queued); see Retry-After",
    500: "The job failed (`code`: its error type; `job_id`) or an internal error",
    504: "The job did not finish within the server's wait (DIFFQ_MAX_WAIT_SECONDS, `job_timeout`): it goes "
    "on, and GET /v1/jobs/{job_id} returns it and its images; `x-should-retry: false`",
}
_RETRY_AFTER = {429, 503}
_JOB_ANSWERS = {409, 500, 504}  # may be about a queued job: its Location, and no retry
_JOB_HEADERS = {
    "Location": {"description": "The job's URL, when the answer is about one", "schema": {"type": "string"}},
    "x-should-retry": {
        "description": "`false` when a retry would queue the same work again (OpenAI's SDKs honour it)",
        "schema": {"type": "string", "enum": ["false"]},
    },
}


def openai_error_responses() -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of an OpenAI-compatible route: OPENAI_ERRORS in OpenAI's body, the
    protocol layer's answers in the service's, and the 503 in either."""
    out: dict[int | str, dict[str, Any]] = dict(error_responses())
    for status, description in OPENAI_ERRORS.items():
        out[status] = {"model": OpenAIErrorBody, "description": description}
        if status in _RETRY_AFTER:
            out[status]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        if status in _JOB_ANSWERS:
            out[status]["headers"] = _JOB_HEADERS
    out[503] = {
        "description": "The queue is full or the job store is unavailable (OpenAI's body, `code` "
        "`unavailable`; `job_id` when the job may have been queued all the same), or this gateway "
        "process is past its connection limit (the service's body, `overloaded`); see Retry-After",
        "headers": {"Retry-After": RETRY_AFTER_HEADER},
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/OpenAIErrorBody"},
                        {"$ref": "#/components/schemas/ErrorBody"},
                    ]
                }
            }
        },
    }
    # Also keeps FastAPI from documenting its own 422 body, which this route never sends.
    out["4XX"] = {"model": OpenAIErrorBody, "description": "Any other client error, in OpenAI's shape"}
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))
