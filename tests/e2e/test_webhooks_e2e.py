"""Webhooks against the real stack: a gateway, a worker and a deliverer (``diffq webhooks run``)
as processes, and receivers on loopback (allowed by ``DIFFQ_WEBHOOK_ALLOW_PRIVATE``, as the
setting says tests may). Every delivery is verified with the ``standardwebhooks`` package."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import ROOT, Stack, wait_for
from tests.receivers import Answer, Received, Receiver, status
from webhooks.signing import new_secret

SECRET, OLD_SECRET = new_secret(), new_secret()
JOB = {"class_label": 3, "num_images": 1, "steps": 2, "sampler": "ddim", "guidance_scale": 1.0}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def verified(r: Received, secret: str = SECRET) -> dict:
    """The body, once ``standardwebhooks`` has verified its signature (it raises otherwise)."""
    return Webhook(secret).verify(r.body, r.headers)


def hooked_stack(make_stack: Callable[..., Stack], **env: str) -> Stack:
    values = {
        "DIFFQ_WEBHOOK_SECRETS": f"*={SECRET}|{OLD_SECRET}",
        "DIFFQ_WEBHOOK_ALLOW_PRIVATE": "true",
        "DIFFQ_WEBHOOK_BACKOFF_SCALE": "0.002",  # 5 s, 5 min, 30 min... -> 10 ms, 0.6 s, 3.6 s...
        "DIFFQ_WEBHOOK_POLL_SECONDS": "0.05",
        **env,
    }
    return make_stack(**values)


def start(stack: Stack, webhooks: bool = True) -> None:
    stack.start_gateway()
    stack.start_worker("w1")
    if webhooks:
        stack.start_webhooks()
    stack.wait_ready()


def test_every_terminal_job_is_delivered_signed(make_stack: Callable[..., Stack], receiver: Receiver) -> None:
    stack = hooked_stack(make_stack, DIFFQ_PUBLIC_BASE_URL="https://images.example.com")
    start(stack)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        ok = [
            client.post("/v1/jobs", json={**JOB, "seed": s, "webhook": receiver.url()}).json()
            for s in range(3)
        ]
        started = client.post(
            "/v1/jobs", json={**JOB, "webhook": receiver.url(), "webhook_events": ["started", "succeeded"]}
        ).json()
        assert started["webhook_events"] == ["started", "succeeded"] and ok[0]["webhook"] == receiver.url()
        long = client.post("/v1/jobs", json={**JOB, "steps": 40, "webhook": receiver.url()}).json()
        assert client.delete(f"/v1/jobs/{long['id']}").status_code in (200, 202)
        expired = client.post(
            "/v1/jobs", json={**JOB, "deadline_seconds": 0.001, "webhook": receiver.url()}
        ).json()
        unhooked = client.post("/v1/jobs", json=JOB).json()
        final = {
            j["id"]: wait_for(client, j["id"], {"succeeded", "cancelled", "expired"})
            for j in [*ok, started, long, expired, unhooked]
        }
    assert final[long["id"]]["status"] == "cancelled" and final[expired["id"]]["status"] == "expired"
    got = receiver.wait_delivered(7)  # 3 ok, started's two, the cancel, the expiry
    time.sleep(0.5)  # nothing more comes: the job without a webhook sends nothing
    assert len(receiver.received) == 7
    bodies = [verified(r) for r in got]
    assert [verified(r, OLD_SECRET) for r in got] == bodies  # either secret of a rotation verifies
    by_job: dict[str, list[str]] = {}
    for r, body in zip(got, bodies, strict=True):
        by_job.setdefault(body["id"], []).append(body["status"])
        assert r.headers["content-type"] == "application/json"
        assert r.headers["webhook-id"].startswith(f"msg_{body['id']}_")
    assert unhooked["id"] not in by_job
    for j in ok:
        assert by_job[j["id"]] == ["succeeded"]
    assert (
        sorted(by_job[started["id"]]) == ["running", "succeeded"]
        or by_job[started["id"]] == ["succeeded"] * 2
    )
    assert by_job[long["id"]] == ["cancelled"] and by_job[expired["id"]] == ["expired"]
    # The body is the job view: the same as GET's, images at the public base URL.
    body = next(b for b in bodies if b["id"] == ok[0]["id"])
    assert body["images"][0]["url"] == f"https://images.example.com/v1/jobs/{ok[0]['id']}/images/0"
    assert {k: v for k, v in body.items() if k != "queue_position"} == {
        k: v for k, v in final[ok[0]["id"]].items() if k != "queue_position"
    }
    assert len({r.headers["webhook-id"] for r in got}) == 7
    metrics = httpx.get(f"{stack.worker_urls['webhooks']}/metrics").text
    assert 'diffq_webhook_deliveries_total{outcome="delivered"} 7.0' in metrics
    assert 'diffq_webhook_attempts_total{outcome="delivered"} 7.0' in metrics
    assert "diffq_webhook_delivery_latency_seconds_count 7.0" in metrics


def test_a_receiver_that_fails_for_a_while_gets_the_events_later(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    receiver.handle = lambda n: status(503 if n < 3 else 200)  # down for the first three attempts
    stack = hooked_stack(make_stack)
    start(stack)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json={**JOB, "webhook": receiver.url()}).json()
        wait_for(client, job["id"], {"succeeded"})
    [r] = receiver.wait_delivered(1)
    assert [x.status for x in receiver.received] == [503, 503, 503, 200]
    assert len({x.headers["webhook-id"] for x in receiver.received}) == 1  # one message, retried
    assert len({x.body for x in receiver.received}) == 1  # the same bytes every time
    assert verified(r)["id"] == job["id"]
    metrics = httpx.get(f"{stack.worker_urls['webhooks']}/metrics").text
    assert 'diffq_webhook_attempts_total{outcome="http_error"} 3.0' in metrics
    assert 'diffq_webhook_delivery_attempts_bucket{le="4.0"} 1.0' in metrics
    assert 'diffq_webhook_delivery_attempts_bucket{le="3.0"} 0.0' in metrics


def test_killing_the_deliverer_mid_attempt_and_mid_retry_loses_nothing(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    hang, up = threading.Event(), threading.Event()

    def answer(n: int) -> Answer:
        if n == 0:
            hang.wait(30)  # the first attempt hangs: its deliverer is killed meanwhile
            return status(500)  # to a deliverer that is gone: whatever it answers, nobody hears it
        return status(200 if up.is_set() else 500)

    receiver.handle = answer
    stack = hooked_stack(make_stack, DIFFQ_WEBHOOK_TIMEOUT_SECONDS="2")  # a lease of 9 s
    start(stack)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        jobs = [
            client.post("/v1/jobs", json={**JOB, "seed": s, "webhook": receiver.url()}).json()
            for s in range(4)
        ]
        for j in jobs:
            wait_for(client, j["id"], {"succeeded"})
    deadline = time.monotonic() + 30
    while len(receiver.received) < 5:  # the hung one, and each other job failed at least once
        assert time.monotonic() < deadline, receiver.received
        time.sleep(0.05)
    stack.stop("webhooks", signal.SIGKILL)
    hang.set()
    up.set()
    stack.start_webhooks("webhooks-2")
    got = receiver.wait_delivered(4, timeout=60)
    assert sorted(verified(r)["id"] for r in got) == sorted(j["id"] for j in jobs)


def test_private_receivers_are_refused_without_the_setting(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(DIFFQ_WEBHOOK_SECRETS=f"*={SECRET}", DIFFQ_WEBHOOK_POLL_SECONDS="0.05")
    start(stack)
    port = receiver.port
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        for host in ("127.0.0.1", "[::1]", "169.254.169.254", "10.0.0.7", "[::ffff:192.168.1.1]"):
            r = client.post("/v1/jobs", json={**JOB, "webhook": f"http://{host}:{port}/hook"})
            assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error", (host, r.text)
            assert r.json()["error"]["details"][0]["field"] == "webhook"
        # A name is checked on what it resolves to, at delivery: a dead letter, nothing sent.
        job = client.post("/v1/jobs", json={**JOB, "webhook": f"http://localhost:{port}/hook"}).json()
        wait_for(client, job["id"], {"succeeded"})
    letters = wait_dead_letters(stack, 1)
    assert letters[0]["job"] == job["id"] and "loopback" in letters[0]["error"]
    assert receiver.received == []
    metrics = httpx.get(f"{stack.worker_urls['webhooks']}/metrics").text
    assert 'diffq_webhook_attempts_total{outcome="refused"} 1.0' in metrics
    assert 'diffq_webhook_deliveries_total{outcome="dead_letter"} 1.0' in metrics


def test_dead_letters_replay_to_a_receiver_that_came_back(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    receiver.handle = lambda _n: status(500)
    stack = hooked_stack(make_stack, DIFFQ_WEBHOOK_BACKOFF_SCALE="0.0001")  # 8 attempts in ~10 s
    start(stack)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        job = client.post("/v1/jobs", json={**JOB, "webhook": receiver.url()}).json()
        wait_for(client, job["id"], {"succeeded"})
    [letter] = wait_dead_letters(stack, 1, timeout=60)
    assert letter["attempts"] == "8" and letter["error"] == "HTTP 500" and letter["body"]["id"] == job["id"]
    assert len(receiver.received) == 8
    receiver.handle = lambda _n: status(200)
    out = cli(stack, "replay", "--all")
    assert out.returncode == 0 and "replayed 1 of 1" in out.stdout
    [r] = receiver.wait_delivered(1)
    assert verified(r)["id"] == job["id"] and r.headers["webhook-id"] == letter["id"]
    assert wait_dead_letters(stack, 0) == []


def test_webhooks_need_a_secret_and_valid_fields(
    make_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    stack = make_stack(DIFFQ_WEBHOOK_ALLOW_PRIVATE="true")  # no secrets configured
    start(stack, webhooks=False)
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        r = client.post("/v1/jobs", json={**JOB, "webhook": receiver.url()})
        assert r.status_code == 422 and "DIFFQ_WEBHOOK_SECRETS" in r.json()["error"]["message"]
        for bad in (
            {"webhook": "ftp://example.com/x"},
            {"webhook": "http://user:pw@example.com/"},
            {"webhook": "https://example.com/" + "a" * 2100},
            {"webhook": "https://"},
            {"webhook": "http://example.com:99999/"},
            {"webhook": receiver.url(), "webhook_events": []},
            {"webhook": receiver.url(), "webhook_events": ["done"]},
            {"webhook_events": ["succeeded"]},
        ):
            r = client.post("/v1/jobs", json={**JOB, **bad})
            assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error", (bad, r.text)


def wait_dead_letters(stack: Stack, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        out = cli(stack, "dead-letters")
        assert out.returncode == 0, out.stderr
        letters = [json.loads(line) for line in out.stdout.splitlines()]
        if len(letters) == count:
            return letters
        assert time.monotonic() < deadline, letters
        time.sleep(0.2)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diffq", "webhooks", *args],
        env=stack.env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
