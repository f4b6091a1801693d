"""``GET /v1/jobs/{id}/events``: a job's status changes and steps as Server-Sent Events.

The stream holds no Redis connection: it marks the job watched (``RedisStore.watch_async``), so
its worker announces every step on the job's step channel, and takes its job's announcements
from the gateway's one subscription (``Waiters.listen``). It reads the job's record when it
opens, at each status change, when announcements may have been missed (the subscription was
made again) and at every heartbeat; the record, not the announcements, is what a ``job`` event
carries.

Events, each with an ``id`` naming the state it shows (``<attempts>.<status>.<step>``):

- ``job``: the job view (as ``GET /v1/jobs/{id}`` answers), when the stream opens and at every
  status change; the stream ends after the one with a terminal status;
- ``progress``: ``{"step": n, "total": steps}``, at every step the worker announces;
- a comment (``: heartbeat``) every ``DIFFQ_EVENT_HEARTBEAT_SECONDS`` while nothing happens.

A client that reconnects with ``Last-Event-ID`` is sent the job's state only if it changed
since that event, and the steps after it. A stream ends after ``DIFFQ_EVENT_STREAM_SECONDS``
(the client resumes); it holds one of its key's waiting places while open.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from diffq.errors import NotFound, Unavailable, ValidationFailed
from diffq.jobs import Job, Status
from service import job_ops
from service.state import State
from service.views import job_view
from service.waiters import Listener

# The reconnection delay a client is told to use (the SSE ``retry`` field), in milliseconds.
RETRY_MS = 1000
# A watched job's mark lasts this long past its last renewal; a stream renews it when half is
# left, at its next announcement or heartbeat (DIFFQ_EVENT_HEARTBEAT_SECONDS is at most 300).
WATCH_SECONDS = 900.0
MAX_EVENT_ID_CHARS = 64


@dataclass(frozen=True)
class EventId:
    """The job state an event showed: what a reconnecting client already has."""

    attempts: int
    status: Status
    step: int

    def __str__(self) -> str:
        return f"{self.attempts}.{self.status.value}.{self.step}"

    @classmethod
    def of(cls, job: Job) -> EventId:
        return cls(job.attempts, job.status, job.step)

    @classmethod
    def parse(cls, text: str) -> EventId:
        """The id a client sent back in ``Last-Event-ID``; ``ValidationFailed`` (422) if it is
        not one this API made."""
        parts = text.split(".")
        try:
            if len(text) > MAX_EVENT_ID_CHARS or len(parts) != 3:
                raise ValueError
            attempts, step = int(parts[0]), int(parts[2])
            if attempts < 0 or step < 0 or not (parts[0].isdigit() and parts[2].isdigit()):
                raise ValueError
            return cls(attempts, Status(parts[1]), step)
        except ValueError:
            raise ValidationFailed(
                "Last-Event-ID is not an event id of this stream (<attempts>.<status>.<step>)",
                details=[{"field": "Last-Event-ID", "message": "not an event id this API sent"}],
            ) from None


def _event_schema(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One kind of event of a job's stream: its name, its data (JSON) and its id."""
    return {
        "type": "object",
        "required": ["event", "data", "id"],
        "properties": {
            "event": {"const": name},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
            "id": {"type": "string", "pattern": r"^[0-9]+\.[a-z]+\.[0-9]+$"},
        },
    }


# Each event of GET /v1/jobs/{id}/events, as an SSE parser gives it (OpenAPI 3.2's
# ``itemSchema``, as FastAPI documents its own event streams).
EVENT_SCHEMA = {
    "oneOf": [
        _event_schema("job", {"$ref": "#/components/schemas/JobView"}),
        _event_schema(
            "progress",
            {
                "type": "object",
                "required": ["step", "total"],
                "properties": {
                    "step": {"type": "integer", "minimum": 0},
                    "total": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
        ),
    ]
}


def sse(event: str, data: str, event_id: str) -> bytes:
    """One Server-Sent Event (``data`` is one line: JSON)."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_close`` once it is over, however it
    ended (finished, the client gone, an error): the stream's waiting place goes back."""

    # Given per response, not here: FastAPI would document the route's 200 as a plain string
    # of this type over the events' schema (``routes.EVENTS_RESPONSES``).
    media_type = None

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], object]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Stream:
    """One stream's state: what the client has been shown, and the chunks that bring it up to
    date."""

    def __init__(self, state: State, job_id: str, owner: str, last: EventId | None) -> None:
        self.state, self.job_id, self.owner = state, job_id, owner
        self.shown = last  # the state the client has
        self.sent_step = last.step if last is not None else 0  # the last step it was sent
        self.job: Job | None = None
        self.gone = False
        self.watched_until = 0.0

    async def sync(self, rewatch: bool = False) -> list[bytes]:
        """Read the record: a ``job`` event if its status (or attempt) changed since the one
        shown, and at a terminal status the last step first. Nothing when the store is away
        (tried again at the next heartbeat). The job's watch mark is renewed when half of it
        is left, and with ``rewatch`` (the store may have been restarted without it)."""
        try:
            job = await job_ops.load(self.state, self.job_id, self.owner)
            now, shown, out = EventId.of(job), self.shown, []
            changed = shown is None or (now.attempts, now.status) != (shown.attempts, shown.status)
            position = await job_ops.queue_position(self.state, job) if changed else None
        except Unavailable:
            return []
        except NotFound:  # its record expired or was removed meanwhile: nothing more to tell
            self.gone = True
            return []
        self.job = job
        if changed:
            if shown is not None and now.attempts != shown.attempts:
                self.sent_step = 0  # a new attempt starts from the first step
            if shown is not None and job.terminal and job.step > self.sent_step:
                out.append(self.progress(job.step, job))  # the last step, then the end
            estimate = await self.state.estimates.of(job, position)
            view = job_view(job, position, self.state.settings.public_base_url, estimate)
            out.append(sse("job", view.model_dump_json(), str(now)))
            if shown is None:  # the steps it already made are in the view
                self.sent_step = job.step
            self.shown = now
        if not job.terminal and (rewatch or time.time() > self.watched_until - WATCH_SECONDS / 2):
            try:
                await self.state.store.watch_async(self.job_id, time.time() + WATCH_SECONDS)
                self.watched_until = time.time() + WATCH_SECONDS
            except Unavailable:
                pass  # marked at a later read
        return out

    def progress(self, step: int, job: Job) -> bytes:
        """The ``progress`` event of ``job`` at ``step``."""
        self.sent_step = step
        event_id = EventId(job.attempts, Status.RUNNING, step)
        return sse("progress", json.dumps({"step": step, "total": job.request.steps}), str(event_id))

    @property
    def over(self) -> bool:
        return self.gone or (self.job is not None and self.job.terminal)


async def job_events(
    state: State, job_id: str, owner: str, listener: Listener, last: EventId | None
) -> AsyncIterator[bytes]:
    """The events of the caller's job ``job_id`` from now on (see the module's docstring).
    ``listener`` was registered before this reads the record, so nothing announced after the
    read is missed."""
    settings = state.settings
    ends_at = time.monotonic() + settings.event_stream_seconds
    stream = _Stream(state, job_id, owner, last)
    yield f"retry: {RETRY_MS}\n\n".encode()
    listener.resync = False
    for chunk in await stream.sync():
        yield chunk
    while not stream.over and (left := ends_at - time.monotonic()) > 0:
        got = await listener.next(min(settings.event_heartbeat_seconds, left))
        if listener.closed:  # the gateway is stopping: end here, the client resumes elsewhere
            for announcement in got:
                for chunk in _step(stream, announcement.step):
                    yield chunk
            return
        if not got and not listener.resync:
            if time.monotonic() >= ends_at:
                return
            yield HEARTBEAT  # and read the record: a deadline may have passed, say
        if not got or listener.resync:
            rewatch, listener.resync = listener.resync, False
            for chunk in await stream.sync(rewatch):
                yield chunk
        for announcement in got:
            if stream.over:
                return
            # A terminal status, a job shown as not started yet, or a watch mark half gone:
            # read the record (its job event first); a step then follows.
            if (
                announcement.status is not None
                or stream.job is None
                or stream.shown is None
                or stream.shown.status != Status.RUNNING
                or time.time() > stream.watched_until - WATCH_SECONDS / 2
            ):
                for chunk in await stream.sync():
                    yield chunk
            for chunk in _step(stream, announcement.step):
                yield chunk


def _step(stream: _Stream, step: int | None) -> list[bytes]:
    """The event of an announced step, unless the client has it (or no record was read yet)."""
    job = stream.job
    return (
        [stream.progress(step, job)]
        if job is not None and step is not None and step > stream.sent_step
        else []
    )
