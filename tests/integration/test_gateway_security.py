"""The gateway with auth on (real process, real Valkey, no worker): keys, ownership,
idempotency, rate and in-flight limits, the queue bound, deadlines, and no keys in logs."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.auth import hash_key
from tests.conftest import Stack

ALICE, BOB = "dq_alice-test-key-0123456789", "dq_bob-test-key-9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"
JOB = {"class_label": 1, "steps": 4, "seed": 3}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway(make_stack) -> Stack:  # type: ignore[no-untyped-def]
    def start(**env: str) -> Stack:
        stack: Stack = make_stack(
            DIFFQ_AUTH="required", DIFFQ_API_KEYS=KEYS, **{"DIFFQ_HIGH_PRIORITY_KEYS": "alice", **env}
        )
        stack.start_gateway()
        return stack

    return start  # type: ignore[return-value]


def test_keys_are_required_and_checked(gateway) -> None:  # type: ignore[no-untyped-def]
    base = gateway().base_url
    for headers in ({}, auth("dq_wrong"), {"Authorization": f"Basic {ALICE}"}):
        r = httpx.post(f"{base}/v1/jobs", json=JOB, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{base}/v1/models").status_code == 401
    assert httpx.get(f"{base}/v1/models", headers=auth(ALICE)).status_code == 200
    # Probes stay open (the network policy guards them).
    assert httpx.get(f"{base}/livez").status_code == 200


def test_metrics_take_a_key_unless_made_public(gateway) -> None:  # type: ignore[no-untyped-def]
    base = gateway().base_url
    for headers in ({}, auth("dq_wrong")):
        r = httpx.get(f"{base}/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"
    r = httpx.get(f"{base}/metrics", headers=auth(ALICE))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"diffq_http_requests", "diffq_jobs_submitted", "diffq_queue_depth", "diffq_redis_up"} <= families
    # The refused scrapes were counted like any request: under the route, as 401s.
    assert 'route="/metrics",status_code="401"' in r.text

    public = gateway(DIFFQ_METRICS_PUBLIC="true").base_url
    r = httpx.get(f"{public}/metrics")
    assert r.status_code == 200 and "diffq_queue_depth" in r.text
    assert httpx.get(f"{public}/v1/models").status_code == 401  # the API itself still takes a key


def test_only_keys_granted_it_may_use_high_priority(gateway) -> None:  # type: ignore[no-untyped-def]
    base = gateway().base_url
    high = {**JOB, "priority": "high"}
    r = httpx.post(f"{base}/v1/jobs", json=high, headers=auth(BOB))
    assert r.status_code == 422
    assert r.json()["error"]["details"] == [{"field": "priority", "message": "not granted to this key"}]
    low = httpx.post(f"{base}/v1/jobs", json={**JOB, "priority": "low"}, headers=auth(BOB))
    assert low.status_code == 202
    granted = httpx.post(f"{base}/v1/jobs", json=high, headers=auth(ALICE))
    assert granted.status_code == 202 and granted.json()["request"]["priority"] == "high"


def test_each_key_has_its_share_of_the_queue(gateway) -> None:  # type: ignore[no-untyped-def]
    """No worker runs: alice's waiting work reaches her cap and she gets 429 with Retry-After,
    while bob's submissions go on; a job larger than the cap itself is a 422."""
    one = {**JOB, "num_images": 1, "steps": 8, "guidance_scale": 3.0}  # 16 evaluations (guided)
    base = gateway(DIFFQ_MAX_QUEUED_EVALUATIONS_PER_KEY="32").base_url
    for _ in range(2):
        assert httpx.post(f"{base}/v1/jobs", json=one, headers=auth(ALICE)).status_code == 202
    full = httpx.post(f"{base}/v1/jobs", json=one, headers=auth(ALICE))
    assert full.status_code == 429 and full.json()["error"]["type"] == "too_much_queued_work"
    assert int(full.headers["Retry-After"]) >= 1
    assert httpx.post(f"{base}/v1/jobs", json=one, headers=auth(BOB)).status_code == 202
    never = httpx.post(f"{base}/v1/jobs", json={**one, "num_images": 3}, headers=auth(BOB))
    assert never.status_code == 422
    assert "DIFFQ_MAX_QUEUED_EVALUATIONS_PER_KEY" in never.json()["error"]["message"]


def test_jobs_belong_to_their_key(gateway) -> None:  # type: ignore[no-untyped-def]
    stack = gateway()
    with httpx.Client(base_url=stack.base_url, headers=auth(ALICE)) as alice:
        job = alice.post("/v1/jobs", json=JOB).json()
        assert len(job["id"]) == 32 and int(job["id"], 16) >= 0  # 128 random bits, hex
        assert alice.get(f"/v1/jobs/{job['id']}").status_code == 200
    with httpx.Client(base_url=stack.base_url, headers=auth(BOB)) as bob:
        for r in (
            bob.get(f"/v1/jobs/{job['id']}"),
            bob.get(f"/v1/jobs/{job['id']}/images/0"),
            bob.delete(f"/v1/jobs/{job['id']}"),
        ):
            assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    with httpx.Client(base_url=stack.base_url, headers=auth(ALICE)) as alice:
        assert alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"  # bob's cancel did nothing
    logs = stack.read_log("gateway")
    assert ALICE not in logs and BOB not in logs


def test_idempotency_key_returns_the_same_job(gateway) -> None:  # type: ignore[no-untyped-def]
    stack = gateway()
    with httpx.Client(base_url=stack.base_url, headers=auth(ALICE)) as alice:
        key = {"Idempotency-Key": "retry-me-1"}
        first = alice.post("/v1/jobs", json=JOB, headers=key)
        again = alice.post("/v1/jobs", json=JOB, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first.headers
        other = alice.post("/v1/jobs", json={**JOB, "seed": 4}, headers=key)
        assert other.status_code == 409 and other.json()["error"]["type"] == "idempotency_conflict"

        ids: list[str] = []
        threads = [
            threading.Thread(
                target=lambda: ids.append(
                    alice.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": "burst-2"}).json()["id"]
                )
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 6 and len(set(ids)) == 1


def test_rate_limit_per_key(gateway) -> None:  # type: ignore[no-untyped-def]
    stack = gateway(DIFFQ_RATE_LIMIT_PER_SECOND="0.5", DIFFQ_RATE_LIMIT_BURST="3")
    with httpx.Client(base_url=stack.base_url) as client:
        codes = [client.post("/v1/jobs", json=JOB, headers=auth(ALICE)).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        r = client.post("/v1/jobs", json=JOB, headers=auth(ALICE))
        assert r.json()["error"]["type"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        assert client.post("/v1/jobs", json=JOB, headers=auth(BOB)).status_code == 202  # bob's own bucket


def test_in_flight_limit_and_queue_bound(gateway) -> None:  # type: ignore[no-untyped-def]
    # Each JOB is one guided image x 4 steps = 8 evaluations; the queue holds 24.
    stack = gateway(DIFFQ_MAX_JOBS_IN_FLIGHT_PER_KEY="2", DIFFQ_MAX_QUEUED_EVALUATIONS="24")
    with httpx.Client(base_url=stack.base_url) as client:
        ids = [client.post("/v1/jobs", json=JOB, headers=auth(ALICE)).json()["id"] for _ in range(2)]
        r = client.post("/v1/jobs", json=JOB, headers=auth(ALICE))
        assert r.status_code == 429 and r.json()["error"]["type"] == "too_many_jobs"
        assert "Retry-After" in r.headers
        client.delete(f"/v1/jobs/{ids[0]}", headers=auth(ALICE))  # a finished job frees a slot
        assert client.post("/v1/jobs", json=JOB, headers=auth(ALICE)).status_code == 202
        assert client.post("/v1/jobs", json=JOB, headers=auth(BOB)).status_code == 202  # 24 queued
        r = client.post("/v1/jobs", json=JOB, headers=auth(BOB))
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1


def test_deadline_expires_a_waiting_job(gateway) -> None:  # type: ignore[no-untyped-def]
    stack = gateway()
    with httpx.Client(base_url=stack.base_url, headers=auth(ALICE)) as alice:
        job = alice.post("/v1/jobs", json={**JOB, "deadline_seconds": 0.3, "priority": "high"}).json()
        assert job["request"]["priority"] == "high" and job["timings"]["deadline_at"]
        time.sleep(0.4)
        got = alice.get(f"/v1/jobs/{job['id']}").json()
        assert got["status"] == "expired"
        assert got["error"]["type"] == "deadline_exceeded"
        assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 409
