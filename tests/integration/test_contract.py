"""The gateway does what its contract says at the edges: 405 with Allow, 413 for a chunked
body past the bound, an unreadable Prefer ignored, a job that can never be admitted refused
as invalid, and an Idempotency-Key replay recognised when a default is spelled out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Stack, stack_env


@pytest.fixture(scope="module")
def gateway(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    env = stack_env(
        valkey, f"c{uuid.uuid4().hex[:10]}", DIFFQ_MAX_QUEUED_EVALUATIONS="1000", DIFFQ_MAX_WAIT_SECONDS="2"
    )
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("gw"))
    stack.start_gateway()
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            yield client
    finally:
        stack.stop_all()


def test_a_wrong_method_is_405_with_allow(gateway: httpx.Client) -> None:
    r = gateway.put("/v1/jobs")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


def test_a_chunked_body_past_the_bound_is_413(gateway: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"class_label": 1, "pad": "'
        for _ in range(100):
            yield b"x" * 1024  # 100 KiB, past the 64 KiB bound, with no Content-Length
        yield b'"}'

    r = gateway.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"


def test_a_chunked_body_within_the_bound_is_read(gateway: httpx.Client) -> None:
    r = gateway.post(
        "/v1/jobs", content=iter([b'{"class_label"', b": 2}"]), headers={"content-type": "application/json"}
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("prefer", ["wait=" + "9" * 500, "wait=soon", "x" * 300, "wait=1e9"])
def test_an_unreadable_or_long_prefer_is_ignored_or_capped(gateway: httpx.Client, prefer: str) -> None:
    r = gateway.post("/v1/jobs", json={"class_label": 3}, headers={"Prefer": prefer})
    assert r.status_code == 202, r.text
    applied = r.headers.get("preference-applied")
    assert applied in (None, "wait=2"), applied  # capped at the server's 2 s, never misread as 1


def test_a_job_that_can_never_be_admitted_is_422(gateway: httpx.Client) -> None:
    # 16 guided images x 50 steps = 1,600 evaluations against a bound of 1,000: waiting won't help.
    r = gateway.post("/v1/jobs", json={"class_label": 1, "num_images": 16, "steps": 50, "guidance_scale": 3})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    assert "DIFFQ_MAX_QUEUED_EVALUATIONS" in r.json()["error"]["message"]


def test_spelling_a_default_out_is_a_replay_not_a_conflict(gateway: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = gateway.post("/v1/jobs", json={"class_label": 4, "seed": 9}, headers=key)
    assert first.status_code == 202
    spelled = {"class_label": 4, "seed": 9, "num_images": 1, "priority": "normal", "sampler": "dpmpp_2m"}
    again = gateway.post("/v1/jobs", json=spelled, headers=key)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = gateway.post("/v1/jobs", json={"class_label": 5, "seed": 9}, headers=key)
    assert other.status_code == 409
    # A drawn seed is not part of the request a retry repeats: no seed given, same job.
    key2 = {"Idempotency-Key": uuid.uuid4().hex}
    a = gateway.post("/v1/jobs", json={"class_label": 6}, headers=key2)
    b = gateway.post("/v1/jobs", json={"class_label": 6}, headers=key2)
    assert a.json()["id"] == b.json()["id"]
