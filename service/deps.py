"""The routes' dependencies: the shared state, who is asking, ``Prefer: wait`` and its waiting
place, the Idempotency-Key header, and a way to learn that the client went away."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from diffq.errors import Unauthorized
from diffq.jobs import ANONYMOUS
from service.state import State


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool,
# a hop per dependency per request, and these do no I/O.
def state_of(request: Request) -> State:
    state: State = request.app.state.diffq
    return state


async def get_state(request: Request) -> State:
    return state_of(request)


StateDep = Annotated[State, Depends(get_state)]

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def identify(state: State, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The name of the presented API key (``anonymous`` with auth off); 401 without a known one."""
    if state.settings.auth == "off":
        return ANONYMOUS
    token = credentials.credentials if credentials else None
    name = state.keys.identify(token) if token else None
    if name is None:
        raise Unauthorized("missing or unknown API key; send Authorization: Bearer <key>")
    return name


async def get_owner(state: StateDep, credentials: Credentials) -> str:
    """Who is asking: the name of their API key (everyone is ``anonymous`` with auth off)."""
    return identify(state, credentials)


OwnerDep = Annotated[str, Depends(get_owner)]


async def metrics_access(state: StateDep, credentials: Credentials) -> None:
    """``/metrics`` takes a key like the API, unless DIFFQ_METRICS_PUBLIC opens it (a scraper
    on a trusted network) or auth is off."""
    if not state.settings.metrics_public:
        identify(state, credentials)


MetricsAccess = Annotated[None, Depends(metrics_access)]

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


async def get_wait(state: StateDep, prefer: PreferHeader = None) -> float | None:
    """The wait the client prefers, capped at DIFFQ_MAX_WAIT_SECONDS; None for none."""
    return wait_preference(prefer, state.settings.max_wait_seconds)


WaitDep = Annotated[float | None, Depends(get_wait)]


@dataclass(frozen=True)
class Submitter:
    """What a submission needs to know before its body is looked at: the state, who is asking
    (401 first, as on every route) and the wait they prefer."""

    state: State
    owner: str
    wait: float | None


def submitter(
    request: Request, credentials: HTTPAuthorizationCredentials | None, prefer: str | None
) -> Submitter:
    """The submitter of ``request``: its state, its key's name (401 without a known one) and
    the wait its ``Prefer`` header asks for."""
    state = state_of(request)
    wait = wait_preference(prefer, state.settings.max_wait_seconds)
    return Submitter(state, identify(state, credentials), wait)


async def get_submitter(request: Request, credentials: Credentials, prefer: PreferHeader = None) -> Submitter:
    """``StateDep``, ``OwnerDep`` and ``WaitDep`` in one dependency, for ``POST /v1/jobs``, the
    busiest route: FastAPI solves each dependency of a request separately, and that tree was
    about 40% of the route's time in process (measured with cProfile). The route's plain
    requests skip FastAPI's solving altogether (``service.submit_route``)."""
    return submitter(request, credentials, prefer)


SubmitterDep = Annotated[Submitter, Depends(get_submitter)]


IDEMPOTENCY_KEY_MAX = 255  # characters of an Idempotency-Key (and at least one)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        description="Retries with the same key (per API key, within the result TTL) return the same job.",
    ),
]

LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=64,
        description="An event stream's resumption: the `id` of the last event the client received "
        "(an EventSource sends it by itself when it reconnects).",
    ),
]

ClientGone = Callable[[], Awaitable[None]]


async def client_gone(request: Request) -> ClientGone:
    """What returns once the client has disconnected: ``receive`` gives what is left of the
    body, if anything (a route that takes a body has read it), then the disconnect."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the body of a request no route read (a GET's, empty)

    return gone


ClientGoneDep = Annotated[ClientGone, Depends(client_gone)]
