"""Event streams' pure parts: the ids (service.events), the client's parser and its following
of a stream (diffq.client), the latter against a scripted transport: the real gateway's
streams are tested in tests/e2e/test_events_e2e.py."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from diffq.client import Event, follow, sse_events
from diffq.errors import ValidationFailed
from diffq.jobs import Status
from service.events import EventId, sse


def test_event_ids_name_the_state_and_parse_back() -> None:
    for attempts, status, step in ((0, Status.QUEUED, 0), (3, Status.RUNNING, 999), (1, Status.SUCCEEDED, 8)):
        event_id = EventId(attempts, status, step)
        assert EventId.parse(str(event_id)) == event_id
    assert str(EventId(2, Status.RUNNING, 5)) == "2.running.5"


@pytest.mark.parametrize(
    "text",
    ["", "1.running", "1.running.2.3", "a.running.1", "1.bogus.1", "-1.queued.0", "1.queued.+2", "9" * 70],
)
def test_foreign_event_ids_are_refused(text: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        EventId.parse(text)
    assert info.value.status == 422


def test_the_parser_reads_what_the_gateway_writes_and_the_standard_allows() -> None:
    body = (
        b"retry: 1000\n\n"
        + sse("job", '{"a": 1}', "0.queued.0")
        + b": heartbeat\n\n"
        + sse("progress", '{"step": 1}', "1.running.1")
        + b"data: one\ndata:two\n\n"  # no event name: "message"; an id carries on
        + b"event: empty\n\n"  # no data: no event
    ).decode()
    events = list(sse_events(body.split("\n")))
    assert events == [
        Event("job", '{"a": 1}', "0.queued.0"),
        Event("progress", '{"step": 1}', "1.running.1"),
        Event("message", "one\ntwo", "1.running.1"),
    ]


def _job(status: str, step: int, job_id: str = "j" * 32) -> dict[str, Any]:
    return {"id": job_id, "status": status, "progress": {"step": step, "total": 4}, "queue_position": None}


def test_the_client_follows_a_stream_and_resumes_a_dropped_one_where_it_left() -> None:
    """The first stream drops after step 2; the client reconnects with the last id and reads
    to the end. Every step reaches the progress bar."""
    sent_ids: list[str | None] = []

    def serve(request: httpx.Request) -> httpx.Response:
        sent_ids.append(request.headers.get("Last-Event-ID"))
        if len(sent_ids) == 1:
            body = sse("job", json.dumps(_job("running", 1)), "1.running.1") + sse(
                "progress", '{"step": 2, "total": 4}', "1.running.2"
            )
        else:
            body = sse("progress", '{"step": 3, "total": 4}', "1.running.3") + sse(
                "progress", '{"step": 4, "total": 4}', "1.running.4"
            )
            body += sse("job", json.dumps(_job("succeeded", 4)), "1.succeeded.4")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    shown: list[tuple[int, str]] = []
    with httpx.Client(transport=httpx.MockTransport(serve), base_url="http://gw") as client:
        done = follow(
            client, _job("queued", 0), time.monotonic() + 10, lambda s, j: shown.append((s, j["status"]))
        )
    assert done["status"] == "succeeded"
    assert sent_ids == [None, "1.running.2"]
    assert [s for s, _ in shown] == [1, 2, 3, 4, 4]


def test_the_client_polls_when_it_may_not_stream() -> None:
    """429 (the key's streams are all open): the job is polled instead, to its end."""
    polls = iter([_job("running", 2), _job("succeeded", 4)])

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(429, json={"error": {"type": "too_many_waiters", "message": "busy"}})
        return httpx.Response(200, json=next(polls))

    shown: list[int] = []
    with httpx.Client(transport=httpx.MockTransport(serve), base_url="http://gw") as client:
        done = follow(client, _job("queued", 0), time.monotonic() + 10, lambda s, j: shown.append(s))
    assert done["status"] == "succeeded" and shown == [2, 4]
