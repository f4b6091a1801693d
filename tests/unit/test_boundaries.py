"""Each process imports only its own stack: no web stack in workers, no onnxruntime in the
gateway, torch nowhere at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = """
import sys
from pathlib import Path
import {module}
loaded = [m for m in {forbidden} if m in sys.modules]
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        (
            "workers.main",
            ["fastapi", "starlette", "uvicorn", "torch", "diffusers", "transformers", "tooling"],
        ),
        # prometheus_client must wait until the gateway has set up its multiprocess directory.
        ("service.main", ["onnxruntime", "torch", "prometheus_client", "tokenizers", "tooling"]),
        ("diffq.cli", ["fastapi", "onnxruntime", "torch", "redis", "prometheus_client"]),
        ("diffq.serve", ["fastapi", "onnxruntime", "torch"]),
    ],
)
def test_process_imports_stay_in_their_lane(module: str, forbidden: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.format(module=module, forbidden=forbidden)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


PROJECT = ("diffq", "sampling", "model_store", "workers", "service", "tooling", "bench", "tests")
ENTRY_POINTS = {"diffq/cli.py", "diffq/__main__.py"}  # the top floor: they start every process


def _imports(path: Path) -> set[str]:
    """Top-level project packages a module imports (at module level or inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(PROJECT)


# package -> project packages it may import (its own always allowed)
ALLOWED = {
    "sampling": set(),
    "model_store": {"sampling"},
    "diffq": {"sampling", "model_store"},
    "workers": {"diffq", "sampling", "model_store"},
    "service": {"diffq", "sampling", "model_store"},
    "tooling": {"diffq", "sampling", "model_store", "workers"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    """The core never imports the gateway, workers or tooling; sampling imports nothing of the
    project; workers and the gateway never import each other or the tooling."""
    root = Path(__file__).resolve().parents[2]
    offenders = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in ENTRY_POINTS:
            continue
        bad = _imports(path) - ALLOWED[package] - {package}
        if bad:
            offenders[rel] = sorted(bad)
    assert offenders == {}
