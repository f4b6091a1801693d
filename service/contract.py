"""The OpenAPI document as clients should read it: every bound a JSON Schema keyword
(``minimum``, ``exclusiveMinimum``, ...) of its exact value. Used by the app for its own
``/openapi.json`` and by ``diffq openapi`` for the committed document, so the two agree."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service import schemas

# pydantic's constraint names, kept as-is where it cannot place a bound on a type (a union such
# as StrictFloat | StrictInt), and the JSON Schema keywords validators and generators read.
JSON_SCHEMA_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
_BOUNDS = set(JSON_SCHEMA_BOUNDS.values())


def exact_bounds(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document with pydantic's exact bounds and JSON Schema's keywords."""
    for name, component in document.get("components", {}).get("schemas", {}).items():
        model = getattr(schemas, name, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            # FastAPI's document model holds bounds as floats: 2**63 - 1 would read 2**63.
            _copy_bounds(model.model_json_schema(), component)
    result: dict[str, Any] = json_schema_bounds(document)
    return result


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
