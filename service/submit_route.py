"""``POST /v1/jobs`` without FastAPI's per-request machinery for the requests that need none.

The submission is the gateway's busiest route. FastAPI solves its dependency tree and parses
its body anew for every request, and that was a quarter of the route's CPU time (py-spy, in
process). ``SubmitRoute`` handles the plain case itself: a JSON body that ``JobCreate`` takes
as it is and headers that need no checking. Everything else goes to FastAPI's own handler,
which answers it exactly as before (its validation errors, its content-type rules). The route's
OpenAPI document comes from the endpoint's signature, as for any route, so it does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pydantic
from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.deps import IDEMPOTENCY_KEY_MAX, bearer, submitter
from service.schemas import JobCreate


def plain_body(request: Request, body: bytes) -> JobCreate | None:
    """The body as a ``JobCreate`` when it is a JSON object that validates as sent; None when
    FastAPI should look at it (another content type, bad JSON, a field error)."""
    content_type = request.headers.get("content-type", "")
    if not body or content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        return JobCreate.model_validate_json(body)
    except pydantic.ValidationError:
        return None


class SubmitRoute(APIRoute):
    """The route class of ``POST /v1/jobs`` (``service.routes.submit_job``): it calls the endpoint
    with the arguments its dependencies would have given, or hands the request to FastAPI."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            body = plain_body(request, await request.body())  # cached: FastAPI reads it again
            key = request.headers.get("idempotency-key")
            if body is None or (key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX):
                return await standard(request)
            who = submitter(request, await bearer(request), request.headers.get("prefer"))
            response: Response = await endpoint(request=request, body=body, who=who, idempotency_key=key)
            return response

        return handle
