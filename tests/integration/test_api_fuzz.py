"""Property-based fuzzing of the real gateway against the committed OpenAPI document
(schemathesis): whatever the body, path or header, no 5xx beyond the documented 503, only
documented status codes, and responses that match their schemas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.auth import hash_key
from tests.conftest import ROOT, Stack

KEY = "dq_fuzz-test-key-000000000000"
schema = schemathesis.openapi.from_path(ROOT / "openapi" / "openapi.json")


@pytest.fixture(scope="module")
def fuzz_gateway(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.conftest import stack_env

    env = stack_env(
        valkey,
        "tfuzz",
        DIFFQ_AUTH="required",
        DIFFQ_API_KEYS=f"fuzz:{hash_key(KEY)}",
        DIFFQ_RATE_LIMIT_PER_SECOND="1000",
        DIFFQ_RATE_LIMIT_BURST="1000",
        DIFFQ_MAX_WAIT_SECONDS="0.2",  # a generated `Prefer: wait=N` must not stall the run
    )
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("fuzz"))
    stack.start_gateway()
    yield stack.base_url
    stack.stop_all()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_only_documented_statuses(case: schemathesis.Case, fuzz_gateway: str) -> None:
    # 503 is documented (queue full, store down) but must not happen here: Redis is up.
    response = case.call_and_validate(
        base_url=fuzz_gateway,
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
    assert response.status_code < 500 or case.operation.path == "/readyz"
