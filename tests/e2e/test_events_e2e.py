"""A job's event stream (``GET /v1/jobs/{id}/events``) against the real stack: a gateway and a
worker process on the shipped model. The client reads it with the bundled client's parser."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from diffq.client import Event, sse_events
from tests.conftest import Stack, wait_for

JOB = {
    "class_label": 3,
    "num_images": 1,
    "steps": 12,
    "sampler": "dpmpp_2m",
    "guidance_scale": 2.0,
    "seed": 7,
}


def stream(client: httpx.Client, job_id: str, last_id: str | None = None) -> httpx.Response:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    return client.send(client.build_request("GET", f"/v1/jobs/{job_id}/events", headers=headers), stream=True)


class Reader:
    """Reads one stream in a thread: its events, and how many heartbeats came between them."""

    def __init__(self, response: httpx.Response, stop_after: int | None = None) -> None:
        self.response, self.stop_after = response, stop_after
        self.events: list[Event] = []
        self.heartbeats = 0
        self.ended = False  # the server closed the stream
        self.first = threading.Event()  # the first event came
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _lines(self) -> Iterator[str]:
        for line in self.response.iter_lines():
            if line.startswith(": heartbeat"):
                self.heartbeats += 1
            yield line

    def _read(self) -> None:
        try:
            for event in sse_events(self._lines()):
                self.events.append(event)
                self.first.set()
                if self.stop_after is not None and len(self.events) >= self.stop_after:
                    return
            self.ended = True
        finally:
            self.response.close()
            self.first.set()

    def join(self, timeout: float = 120) -> Reader:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream did not end: {self.events[-3:]}"
        return self

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event == "job"]

    def steps(self) -> list[int]:
        return [json.loads(e.data)["step"] for e in self.events if e.event == "progress"]


@pytest.fixture
def stack(make_stack) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    s: Stack = make_stack(DIFFQ_EVENT_HEARTBEAT_SECONDS="0.2", DIFFQ_MAX_WAITERS_PER_KEY="2")
    s.start_gateway()
    yield s


def parked_stream(base_url: str, job_id: str) -> socket.socket:
    """A stream opened on a socket of its own and left open once its first event came (a
    client that stops reading); closing the socket ends it."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    got = b""
    while b"event: job" not in got:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got
    return sock


def kinds(events: Iterable[Event]) -> list[str]:
    return [e.event for e in events]


def test_a_stream_shows_the_queued_job_then_every_step_and_the_end(stack: Stack) -> None:
    """Opened while the job waits (no worker yet): the queued job, heartbeats while it waits,
    the job running, every one of its steps in order, then the succeeded job, and the end."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json=JOB).json()
        r = stream(client, job["id"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        reader = Reader(r)
        assert reader.first.wait(30)
        # Progress writes a minute apart: only the watch can bring each step.
        stack.start_worker("worker-a", DIFFQ_PROGRESS_INTERVAL_MS="60000")
        reader.join()
        done = wait_for(client, job["id"], {"succeeded"})
    jobs = reader.jobs()
    assert [j["status"] for j in jobs] == ["queued", "running", "succeeded"]
    assert jobs[0]["queue_position"] == 1 and jobs[-1] == {**done, "queue_position": None}
    assert reader.steps() == list(range(1, JOB["steps"] + 1))  # every step, once, in order
    assert kinds(reader.events)[-2:] == ["progress", "job"] and reader.ended
    assert reader.heartbeats >= 1  # the worker took seconds to start
    # Each event's id names the state it shows.
    assert reader.events[0].id == "0.queued.0"
    assert reader.events[-1].id == f"1.succeeded.{JOB['steps']}"  # its first attempt


def test_a_dropped_stream_resumes_after_its_last_event(stack: Stack) -> None:
    """Cut mid-run and reopened with Last-Event-ID: no repeat of the running job, the steps
    after the last one received (none twice), then the end. A client that already has the
    terminal event is told nothing more."""
    stack.start_worker("worker-a")
    stack.wait_ready()
    long_job = {**JOB, "steps": 400, "num_images": 2}
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json=long_job).json()
        wait_for(client, job["id"], {"running"})
        first = Reader(stream(client, job["id"]), stop_after=4).join()  # the job, then 3 steps
        assert kinds(first.events) == ["job", "progress", "progress", "progress"]
        last = first.events[-1]
        second = Reader(stream(client, job["id"], last.id)).join()
        done = wait_for(client, job["id"], {"succeeded"})
        after = Reader(stream(client, job["id"], second.events[-1].id)).join()
        fresh = Reader(stream(client, job["id"])).join()  # a new client: the end, at once
    assert first.jobs()[0]["status"] == "running"
    before = json.loads(last.data)["step"]
    steps = second.steps()
    assert second.jobs() == [{**done, "queue_position": None}]  # only the end: it was running
    assert steps and steps[0] > before and steps == sorted(set(steps)) and steps[-1] == long_job["steps"]
    assert after.events == [] and after.ended
    assert kinds(fresh.events) == ["job"] and fresh.jobs() == [{**done, "queue_position": None}]


def test_streams_are_owned_bounded_and_validated(stack: Stack) -> None:
    """Another key's job is a 404; a Last-Event-ID this API never sent is a 422; past the
    key's waiting places a stream is 429 too_many_waiters, and closing one gives its place back."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json=JOB).json()  # no worker: it stays queued
        unknown = client.get(f"/v1/jobs/{'0' * 32}/events")
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found"
        for bad in ("nonsense", "1.queued", "x.queued.1", "1.bogus.2", "-1.queued.0", "1" * 65):
            r = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": bad})
            assert r.status_code == 422, bad
            assert r.json()["error"]["type"] == "validation_error"
        held = [parked_stream(stack.base_url, job["id"]) for _ in range(2)]
        refused = client.get(f"/v1/jobs/{job['id']}/events")
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "too_many_waiters"
        assert "Retry-After" in refused.headers
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while (again := stream(client, job["id"])).status_code == 429 and time.monotonic() < deadline:
            again.close()  # the gateway has not seen the disconnect yet
            time.sleep(0.05)
        assert kinds(Reader(again, stop_after=1).join().events) == ["job"]
        # Cancelling the queued job ends a stream with the cancelled job.
        watching = Reader(stream(client, job["id"]))
        assert watching.first.wait(30)
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
        watching.join()
    assert [j["status"] for j in watching.jobs()] == ["queued", "cancelled"] and watching.ended


def test_a_stopping_gateway_ends_its_streams_and_answers_its_waits(stack: Stack) -> None:
    """SIGTERM: an open stream ends cleanly after its last event (its client resumes on
    another gateway with Last-Event-ID), and a request waiting on the job answers with it as
    it is: neither is left to be cut at the server's graceful timeout."""
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json=JOB).json()  # no worker: it stays queued
        reader = Reader(stream(client, job["id"]))
        assert reader.first.wait(30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.get, f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=60"})
            time.sleep(0.5)  # the wait is parked
            metrics = client.get("/metrics").text
            assert 'diffq_waiters{kind="stream"} 1.0' in metrics  # each counted as what it is
            assert 'diffq_waiters{kind="wait"} 1.0' in metrics
            stack.stop("gateway", signal.SIGTERM)  # uvicorn re-raises it once shut down: -15
            log = stack.read_log("gateway")
            answer = waiting.result(timeout=30)
        reader.join(30)
    assert "Application shutdown complete" in log and "graceful shutdown exceeded" not in log, log
    assert reader.ended, "the stream was cut, not ended"
    assert [j["status"] for j in reader.jobs()] == ["queued"]
    assert answer.status_code == 200 and answer.json()["status"] == "queued"
