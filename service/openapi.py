"""The committed OpenAPI document is generated from the app; a test fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.app import create_app
from service.config import GatewaySettings


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document (``service.contract.exact_bounds`` applied by the app)."""
    # No Redis connection is made: the client connects lazily on first use. Auth settings do
    # not change the document (the bearer scheme is declared either way).
    return create_app(GatewaySettings(auth="off", api_keys="")).openapi()


def render() -> str:
    """The document as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def write_openapi(path: Path) -> None:
    """Write the document to ``path`` (``diffq openapi``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
