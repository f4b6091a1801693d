"""The collector's setting for server processes (diffq.heap): start-up's objects frozen, the
young generation collected less often; and the gateway's app factory applies it. Each case runs
in a fresh interpreter: the setting is process-wide and must not leak into the test runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from diffq import heap
from tests.conftest import ROOT

SETTLE = """
import gc, json
from diffq import heap
before = gc.get_threshold()
heap.settle()
print(json.dumps([gc.get_freeze_count(), gc.get_threshold(), before]))
"""

GATEWAY = """
import gc, json
from service.main import app_factory
before = gc.get_freeze_count()
app = app_factory()
print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()[0], type(app).__name__]))
"""


def _run(code: str, **env: str) -> list[Any]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env or None
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_settle_freezes_what_start_up_made_and_collects_the_young_less_often() -> None:
    frozen, after, before = _run(SETTLE)
    assert frozen > 1000  # the interpreter's and our modules' objects, out of the collector's walks
    assert after[0] == heap.YOUNG_OBJECTS > before[0] and after[1:] == before[1:]


def test_the_gateway_process_settles_once_its_app_is_built(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_") and k != "REDIS_URL"}
    env.update(REDIS_URL="redis://127.0.0.1:1/0", DIFFQ_AUTH="off", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    before, frozen, young, app = _run(GATEWAY, **env)  # builds the app; nothing connects yet
    assert (before, app, young) == (0, "FastAPI", heap.YOUNG_OBJECTS) and frozen > 10_000
