"""The committed OpenAPI document matches the app (regenerate with `diffq openapi`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from diffq.jobs import SEED_MAX
from service.openapi import openapi_document
from tests.conftest import ROOT


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == openapi_document(), "openapi/openapi.json is stale: run `diffq openapi`"


def test_openapi_documents_the_v1_routes() -> None:
    paths = openapi_document()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/images/{index}", "/v1/models"} <= set(paths)
    assert set(paths["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert "422" in paths["/v1/jobs"]["post"]["responses"]


def test_delete_documents_the_202_of_a_running_job() -> None:
    responses = openapi_document()["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]
    assert {"200", "202", "409"} <= set(responses)
    schema = responses["202"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/JobView"}


def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema object under ``node`` (a property's name is not a keyword)."""
    if isinstance(node, list):
        for item in node:
            yield from _schemas(item)
    elif isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                for prop in value.values():
                    yield from _schemas(prop)
            else:
                yield from _schemas(value)


def test_bounds_are_json_schema_keywords_not_pydantic_constraint_names() -> None:
    document = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    offenders = [s for s in _schemas(document) if {"ge", "le", "gt", "lt"} & set(s)]
    assert not offenders, offenders
    fields = document["components"]["schemas"]["JobCreate"]["properties"]
    # The union-typed fields are where pydantic emits its own names: they must carry the bounds too.
    guidance = fields["guidance_scale"]["anyOf"][0]
    assert (guidance["minimum"], guidance["maximum"]) == (0, 100)
    deadline = fields["deadline_seconds"]["anyOf"][0]
    assert (deadline["exclusiveMinimum"], deadline["maximum"]) == (0, 86_400)
    # Exact integers: a float bound would turn 2**63 - 1 into 2**63, a seed the API refuses.
    assert fields["seed"]["anyOf"][0]["maximum"] == SEED_MAX
    assert isinstance(fields["num_images"]["minimum"], int)


def test_every_operation_documents_the_protocol_layers_answers() -> None:
    # 408 and 431 are sent before routing, 413 by the body-size middleware: any route may get them.
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            assert {"408", "413", "431", "503"} <= set(operation["responses"]), (method, path)


def test_429_only_where_the_rate_limits_apply() -> None:
    paths = openapi_document()["paths"]
    assert "Retry-After" in paths["/v1/jobs"]["post"]["responses"]["429"]["headers"]
    assert "429" not in paths["/v1/jobs/{job_id}"]["get"]["responses"]


def test_the_images_route_documents_openai_errors_and_our_extra_fields() -> None:
    document = openapi_document()
    responses = document["paths"]["/v1/images/generations"]["post"]["responses"]
    openai_body = {"$ref": "#/components/schemas/OpenAIErrorBody"}
    for status in ("400", "401", "404", "409", "429", "500", "504"):
        assert responses[status]["content"]["application/json"]["schema"] == openai_body, status
    assert "422" not in responses  # it answers 400 where the job routes answer 422
    assert responses["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    assert "x-should-retry" in responses["504"]["headers"] and "Retry-After" in responses["429"]["headers"]
    fields = document["components"]["schemas"]["ImageGenerationCreate"]
    assert fields["additionalProperties"] is False and fields["required"] == ["prompt"]
    assert {"seed", "steps", "sampler", "guidance_scale", "negative_prompt", "n", "size"} <= set(
        fields["properties"]
    )
