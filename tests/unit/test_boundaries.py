"""Each process imports only its own stack: no web stack in workers, no onnxruntime in the
gateway, torch nowhere at run time."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {module}
loaded = [m for m in {forbidden} if m in sys.modules]
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("workers.main", ["fastapi", "starlette", "uvicorn", "torch"]),
        # prometheus_client must wait until the gateway has set up its multiprocess directory.
        ("service.main", ["onnxruntime", "torch", "prometheus_client"]),
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
