"""The committed OpenAPI document is generated from the app; a test fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from service import schemas
from service.app import create_app
from service.config import GatewaySettings

# pydantic's constraint names, kept as-is where it cannot place a bound on a type (a union such
# as StrictFloat | StrictInt), and the JSON Schema keywords validators and generators read.
JSON_SCHEMA_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
_BOUNDS = set(JSON_SCHEMA_BOUNDS.values())


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document, with every bound a JSON Schema keyword of its exact value."""
    # No Redis connection is made: the client connects lazily on first use. Auth settings do
    # not change the document (the bearer scheme is declared either way).
    document = create_app(GatewaySettings(auth="off", api_keys="")).openapi()
    for name, component in document.get("components", {}).get("schemas", {}).items():
        model = getattr(schemas, name, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            # FastAPI's document model holds bounds as floats: 2**63 - 1 would read 2**63.
            _copy_bounds(model.model_json_schema(), component)
    return json_schema_bounds(document)


def json_schema_bounds(node: Any) -> Any:
    """``node`` with pydantic's ``ge``/``le``/``gt``/``lt`` renamed to their JSON Schema keywords
    (in every schema object: properties named so are left alone)."""
    if isinstance(node, list):
        return [json_schema_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: json_schema_bounds(prop) for name, prop in value.items()}
        elif key in JSON_SCHEMA_BOUNDS and not isinstance(value, (dict, list)):
            out[JSON_SCHEMA_BOUNDS[key]] = value
        else:
            out[key] = json_schema_bounds(value)
    return out


def _copy_bounds(source: Any, target: Any) -> None:
    """Bounds of ``source`` (pydantic's schema of a model) written over the same places in
    ``target`` (FastAPI's copy of it); the two have the same shape."""
    if isinstance(source, dict) and isinstance(target, dict):
        for key, value in source.items():
            if key in _BOUNDS and key in target and isinstance(value, (int, float)):
                target[key] = value
            elif key in target:
                _copy_bounds(value, target[key])
    elif isinstance(source, list) and isinstance(target, list) and len(source) == len(target):
        for s, t in zip(source, target, strict=True):
            _copy_bounds(s, t)


def render() -> str:
    """The document as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def write_openapi(path: Path) -> None:
    """Write the document to ``path`` (``diffq openapi``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")
