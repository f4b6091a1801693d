"""The submission's fast path takes only what FastAPI would take as it is (service.submit_route);
everything else goes to FastAPI's handler, whose answers the gateway tests pin."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from service.submit_route import plain_body


def _request(content_type: str | None) -> Request:
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/jobs", "headers": headers})


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8"])
def test_a_json_body_that_validates_is_taken(content_type: str) -> None:
    body = plain_body(_request(content_type), b'{"class_label": 7, "steps": 8, "seed": 1}')
    assert body is not None
    assert (body.class_label, body.steps, body.seed, body.num_images) == (7, 8, 1, 1)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        (None, b'{"class_label": 7}'),  # no content type: FastAPI's rule decides
        ("text/plain", b'{"class_label": 7}'),
        ("application/problem+json", b'{"class_label": 7}'),  # +json: FastAPI parses it, we do not
        ("application/json", b""),
        ("application/json", b'{"class_label": 7'),  # bad JSON: FastAPI's json_invalid error
        ("application/json", b'{"class_label": "7"}'),  # a field error: FastAPI's 422
        ("application/json", b'{"class_label": 7, "colour": "red"}'),  # an unknown field
        ("application/json", b'{"steps": NaN}'),
        ("application/json", b"[1, 2]"),
    ],
)
def test_anything_else_goes_to_fastapi(content_type: str | None, raw: bytes) -> None:
    assert plain_body(_request(content_type), raw) is None
