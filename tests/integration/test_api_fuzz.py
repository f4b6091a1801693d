"""Property-based fuzzing of the real gateway, with auth on and a real worker running, against
the committed OpenAPI document (schemathesis): whatever the body, path or header, no 5xx beyond
the documented 503 of /readyz, only documented status codes, and responses (status, content
type, headers, body) that match the document.

A worker runs the generated jobs that are valid, so the responses of every job status occur:
queued, running, succeeded (with images to fetch), cancelled (while queued or running) and
expired (generated deadlines). Three tests: each operation fuzzed alone; the stateful
sequences schemathesis infers from the document (a submission's ``id`` feeds the read, the
cancel and the image fetch); and a job's life driven on purpose, every response checked.

What the worker does is bounded by settings, not by weaker checks: a job of more than
``EVALUATIONS`` denoiser evaluations is refused (422), and a key holds one unfinished job at a
time (429 past it), so the queue never holds more than one job and admission never answers 503.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from diffq.jobs import TERMINAL
from service.auth import hash_key
from tests.conftest import ROOT, Stack, stack_env
from tests.stores import MNIST

KEY = "dq_fuzz-test-key-000000000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Largest admissible job: 400 row-evaluations of the MNIST model (e.g. 2 guided images, 100
# steps), a fraction of a second on two CPU threads, so generated jobs finish as the run goes.
EVALUATIONS = 400
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
STATEFUL = settings(
    max_examples=15,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate],  # no shrinking: a failure is recorded as it happens
    database=None,
)
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")
ACCEPTED: list[str] = []  # jobs generated requests submitted (202), not yet seen terminal
ENDED: dict[str, dict[str, Any]] = {}  # ... and once seen terminal, their views


@pytest.fixture(scope="module")
def fuzz_stack(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = stack_env(
        valkey,
        f"tfuzz{uuid.uuid4().hex[:8]}",
        DIFFQ_AUTH="required",
        DIFFQ_API_KEYS=f"fuzz:{hash_key(KEY)}",
        DIFFQ_RATE_LIMIT_PER_SECOND="1000",
        DIFFQ_RATE_LIMIT_BURST="1000",
        DIFFQ_MAX_WAIT_SECONDS="0.5",  # a generated `Prefer: wait=N` must not stall the run
        DIFFQ_MAX_QUEUED_EVALUATIONS=str(EVALUATIONS),
        DIFFQ_MAX_JOBS_IN_FLIGHT_PER_KEY="1",  # with the bound above: the queue never overflows
        DIFFQ_PROGRESS_INTERVAL_MS="0",  # progress (and cancel requests) every step
    )
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("fuzz"))
    try:
        stack.start_gateway()
        stack.start_worker("fuzz-worker")
        stack.wait_ready()
        yield stack
        # Every accepted job ends, and none fails: the gateway accepted it, so the worker must
        # be able to run it (a failure here is a request the gateway should have refused).
        drain(stack.base_url)
        failed = {job_id: job for job_id, job in ENDED.items() if job["status"] == "failed"}
        assert not failed, failed
    finally:
        stack.stop_all()
    for name in ("gateway", "fuzz-worker"):
        assert "Traceback" not in stack.read_log(name), stack.read_log(name)


def assert_no_server_error(case: schemathesis.Case, status: int) -> None:
    # 503 is documented (queue full, store down) but must not happen here: Redis is up and the
    # settings keep the queue from filling.
    assert status < 500 or case.operation.path == "/readyz", (case.operation.label, status)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_only_documented_statuses(case: schemathesis.Case, fuzz_stack: Stack) -> None:
    response = case.call_and_validate(base_url=fuzz_stack.base_url, headers=AUTH, checks=CHECKS)
    assert_no_server_error(case, response.status_code)
    note_accepted(case, response)


def note_accepted(case: schemathesis.Case, response: Any) -> None:
    if case.operation.label == "POST /v1/jobs" and response.status_code == 202:
        ACCEPTED.append(response.json()["id"])


def test_linked_sequences_conform(fuzz_stack: Stack) -> None:
    """Submit, then read, cancel or fetch an image of what was submitted (links inferred from
    the document), each response checked as above."""
    base = fuzz_stack.base_url
    failures: list[BaseException] = []
    calls: list[tuple[str, int]] = []

    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each sequence starts with this key's jobs finished, so its first valid submission
            # is accepted (not 429): the sequences depend less on how far the worker has got.
            drain(base)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": base, "headers": AUTH}

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            calls.append((case.operation.label, response.status_code))
            note_accepted(case, response)

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
                assert_no_server_error(case, response.status_code)
            except BaseException as e:  # kept: a replay that cannot repeat it must not hide it
                failures.append(e)
                raise

    # The server's state (whether the worker finished a job yet) decides which links can be
    # followed, so Hypothesis may find a replayed sequence drawing differently and stop with
    # Flaky. Like schemathesis' own runner, that ends a round without failing it; every check
    # failure is still recorded above, and rounds go on until enough calls were made.
    for _ in range(5):
        with contextlib.suppress(Flaky):
            Sequences.run(settings=STATEFUL)
        if failures or len(calls) >= 40:
            break
    assert not failures, failures[0]
    operations = {label for label, status in calls if status < 400}
    assert {"POST /v1/jobs", "GET /v1/jobs/{job_id}"} <= operations, calls


def drain(base: str) -> None:
    """Until every accepted job is terminal: this key's next valid submission is accepted."""
    while ACCEPTED:
        job_id = ACCEPTED.pop()
        ENDED[job_id] = wait_for_terminal(base, job_id)


def wait_for_terminal(base: str, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job's view once it is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text  # accepted jobs outlive the test (their TTL)
        job: dict[str, Any] = r.json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not terminal after {timeout}s")


def call(method: str, path: str, **kwargs: Any) -> tuple[schemathesis.Case, dict[str, Any]]:
    """A hand-made case of ``method path`` (path parameters, body, headers as given)."""
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return schema[path][method].Case(headers=headers, **kwargs), headers


def checked(base: str, method: str, path: str, **kwargs: Any) -> Any:
    case, headers = call(method, path, **kwargs)
    response = case.call_and_validate(base_url=base, headers=headers, checks=CHECKS)
    assert_no_server_error(case, response.status_code)
    return response


def until(base: str, job_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
    """Read the job (each answer checked) until its status is in ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = checked(
            base, "GET", "/v1/jobs/{job_id}", path_parameters={"job_id": job_id}
        ).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {job}")


def submit(base: str, **body: Any) -> dict[str, Any]:
    response = checked(base, "POST", "/v1/jobs", body={"model": MNIST, **body})
    assert response.status_code == 202, response.text
    return dict(response.json())


def test_a_jobs_life_conforms_at_every_status(fuzz_stack: Stack) -> None:
    """Succeeded with images, cancelled while running and while queued, expired, refused: the
    responses a worker makes possible, each checked against the document."""
    base = fuzz_stack.base_url
    drain(base)  # the fuzzing's last job, if unfinished, would hold this key's one place
    done = submit(base, class_label=3, num_images=2, steps=8, seed=1)
    job = until(base, done["id"], {"succeeded"})
    for index in range(2):
        image = checked(
            base,
            "GET",
            "/v1/jobs/{job_id}/images/{index}",
            path_parameters={"job_id": job["id"], "index": index},
        )
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    past = checked(
        base, "GET", "/v1/jobs/{job_id}/images/{index}", path_parameters={"job_id": job["id"], "index": 2}
    )
    assert past.status_code == 404
    terminal = checked(base, "DELETE", "/v1/jobs/{job_id}", path_parameters={"job_id": job["id"]})
    assert terminal.status_code == 409
    waited = checked(
        base, "GET", "/v1/jobs/{job_id}", path_parameters={"job_id": job["id"]}, headers={"Prefer": "wait=1"}
    )
    assert waited.status_code == 200 and waited.json()["status"] == "succeeded"

    # Cancelled while running: the longest admissible job, cancelled once a worker has it.
    long = submit(base, class_label=5, steps=EVALUATIONS, guidance_scale=1.0, sampler="ddpm", seed=2)
    until(base, long["id"], {"running"})
    requested = checked(base, "DELETE", "/v1/jobs/{job_id}", path_parameters={"job_id": long["id"]})
    assert requested.status_code == 202, requested.text
    assert until(base, long["id"], {"cancelled", "succeeded"})["status"] == "cancelled"
    gone = checked(
        base, "GET", "/v1/jobs/{job_id}/images/{index}", path_parameters={"job_id": long["id"], "index": 0}
    )
    assert gone.status_code == 404

    # Expired: a deadline no worker can meet.
    late = submit(base, class_label=1, steps=4, deadline_seconds=0.001, seed=3)
    assert until(base, late["id"], {"expired", "succeeded"})["status"] == "expired"

    # Refused: too much work for the queue (422), and a second unfinished job for this key (429).
    big = checked(base, "POST", "/v1/jobs", body={"model": MNIST, "steps": EVALUATIONS, "num_images": 2})
    assert big.status_code == 422, big.text
    first = submit(base, class_label=2, steps=EVALUATIONS, guidance_scale=1.0, seed=4)
    second = checked(base, "POST", "/v1/jobs", body={"model": MNIST, "class_label": 2, "steps": 4})
    assert second.status_code == 429, second.text
    until(base, first["id"], {"succeeded"})
