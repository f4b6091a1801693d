"""The service's error hierarchy: a stable ``type``, an HTTP status, and whether to retry.

Raised anywhere; turned into ``{"error": {"type", "message", "details"}}`` by one handler in
the gateway. Workers store ``type`` and ``message`` on failed jobs, never a traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    type: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        details: Any = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.headers = dict(headers or {})  # extra response headers (Location, say)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class ValidationFailed(ServiceError):
    type = "validation_error"
    status = 422


class NotFound(ServiceError):
    type = "not_found"
    status = 404


class Conflict(ServiceError):
    type = "conflict"
    status = 409


class IdempotencyConflict(Conflict):
    type = "idempotency_conflict"


class PayloadTooLarge(ServiceError):
    type = "payload_too_large"
    status = 413


class Unavailable(ServiceError):
    """The job store cannot serve the request now (out of reach, restarting, full, read-only):
    ``details.reason`` says which; retry after Retry-After."""

    type = "unavailable"
    status = 503
    retryable = True


class Unauthorized(ServiceError):
    type = "unauthorized"
    status = 401


class RateLimited(ServiceError):
    """Too many submissions from one key; ``retry_after`` says when a token is back."""

    type = "rate_limited"
    status = 429
    retryable = True


class TooManyJobs(ServiceError):
    """One key holds its limit of unfinished jobs."""

    type = "too_many_jobs"
    status = 429
    retryable = True


class Overloaded(ServiceError):
    """The model's queue holds its limit of denoiser work; retry later."""

    type = "overloaded"
    status = 503
    retryable = True


class TooMuchQueuedWork(ServiceError):
    """One key's waiting jobs hold its share of the queue (denoiser work); retry later."""

    type = "too_much_queued_work"
    status = 429
    retryable = True
