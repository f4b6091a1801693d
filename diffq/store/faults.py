"""Every Redis error, translated in this one place.

The gateway's calls raise ``Unavailable`` (503 with Retry-After and ``details.reason``, never
a 500); ``UNREACHABLE`` is what workers back off on, whatever Redis said (out of reach,
loading, out of memory, read-only...). ``fault`` says which kind an error was.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis

from diffq.errors import Unavailable

log = logging.getLogger("diffq.store")

# Every error of the store: Redis out of reach, restarting, full, read-only, refusing a
# command. Workers back off on these and keep what they hold; callers catch these rather than
# importing redis themselves.
UNREACHABLE: tuple[type[Exception], ...] = (redis.RedisError, Unavailable)


@dataclass(frozen=True)
class Fault:
    """A Redis error in the service's words: what clients are told and how callers react."""

    reason: str  # a stable word for details.reason: unreachable, timeout, loading, full, ...
    message: str  # for clients: what the store is doing, and that a retry is the remedy
    retry_after: float  # seconds, for Retry-After
    transient: bool  # out of reach or restarting (an outage), rather than refusing a command
    maybe_applied: bool  # no answer came back: the command may have run anyway
    error: str = ""  # the Redis error's type, for logs
    detail: str = ""  # and its message (a refused script's says which and where), for logs

    def unavailable(self, **details: Any) -> Unavailable:
        """The 503 for this fault; ``details`` are added to the body's details."""
        return Unavailable(self.message, {"reason": self.reason, **details}, retry_after=self.retry_after)


# Error codes redis-py leaves in the message of a plain ResponseError (it strips the codes it
# maps to classes); in a pipeline the message is prefixed, in a script suffixed.
_STATE_CODES = re.compile(r"(?:^|error: )(MISCONF|BUSY|NOREPLICAS|UNBLOCKED)\b")


def fault(error: BaseException) -> Fault:
    """The kind of a Redis error, or of the ``Unavailable`` raised for one.

    Every Redis error is a fault of the store, never of the request: the gateway answers 503
    with Retry-After, workers back off. Connection-level errors are an outage (``transient``);
    the others are the server refusing a command: full (``maxmemory`` with ``noeviction``),
    read-only, unable to persist, busy, or refusing it outright (which also covers a bug in
    one of our scripts: the log says which).
    """
    if isinstance(error, Unavailable) and isinstance(error.__cause__, redis.RedisError):
        error = error.__cause__
    return replace(_classify(error), error=type(error).__name__, detail=str(error)[:500])


def _classify(error: BaseException) -> Fault:
    exc = redis.exceptions
    code = _STATE_CODES.search(str(error))
    if isinstance(error, exc.BusyLoadingError):
        return Fault(
            "loading", "the job store is loading its data after a restart; retry shortly", 1, True, False
        )
    if isinstance(error, (exc.AuthenticationError, exc.AuthorizationError)):
        return Fault(
            "refused", "the job store refused this service's credentials; retry later", 5, False, False
        )
    if isinstance(error, redis.TimeoutError):
        return Fault("timeout", "the job store did not answer in time; retry shortly", 1, True, True)
    if isinstance(error, redis.ConnectionError):
        return Fault("unreachable", "the job store is unreachable; retry shortly", 1, True, True)
    if isinstance(error, exc.OutOfMemoryError):
        return Fault(
            "full", "the job store is full (maxmemory) and refuses new writes; retry later", 5, False, False
        )
    if isinstance(error, exc.ReadOnlyError):
        return Fault(
            "read_only",
            "the job store is read-only (a replica, or a failover); retry shortly",
            1,
            False,
            False,
        )
    if code is not None and code.group(1) == "MISCONF":
        return Fault(
            "cannot_persist",
            "the job store cannot write to its disk and refuses writes; retry later",
            5,
            False,
            False,
        )
    if code is not None or isinstance(error, (exc.TryAgainError, exc.ClusterDownError)):
        return Fault("busy", "the job store is busy; retry shortly", 1, False, False)
    if isinstance(error, exc.ResponseError):
        return Fault("refused", "the job store refused a request; retry later", 5, False, False)
    return Fault("error", "the job store failed; retry later", 5, False, False)


_REFUSAL_LOG_SECONDS = 10.0  # a full store refuses every submission: one line per kind this often
_refusals_logged: dict[str, float] = {}


@contextmanager
def unavailable() -> Iterator[None]:
    """Any Redis error becomes the service's 503 (``fault``), never a hang or a 500.

    A refusal (not an outage) is logged with the error's type and message, at most once per
    kind every few seconds: a full store, or a broken script, must be visible to an operator.
    """
    try:
        yield
    except redis.RedisError as e:
        f = fault(e)
        if not f.transient:
            now = time.monotonic()
            if now - _refusals_logged.get(f.error, -_REFUSAL_LOG_SECONDS) >= _REFUSAL_LOG_SECONDS:
                _refusals_logged[f.error] = now
                log.warning(
                    "redis refused a command",
                    extra={"error": f.error, "detail": f.detail, "reason": f.reason},
                )
        raise f.unavailable() from e
