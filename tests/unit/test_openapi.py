"""The committed OpenAPI document matches the app (regenerate with `diffq openapi`)."""

from __future__ import annotations

import json

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
