"""Prometheus plumbing shared by the gateway and the workers.

Every family starts with ``diffq_`` and uses base units (``_seconds``, ``_total``). Labels are
kept to low-cardinality values (model, sampler-free phase, status, error type, route); job
ids, seeds and keys never become labels. The families themselves live beside the code that
moves them: ``service/metrics.py`` (gateway) and ``workers/metrics.py`` (workers).

The gateway may run several uvicorn processes; prometheus-client's multiprocess mode then
keeps each process's values in files under ``PROMETHEUS_MULTIPROC_DIR`` and a scrape merges
them. That variable must be set before ``prometheus_client`` is first imported, which is why
``service.main`` sets it before importing the app.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from diffq import __version__

PREFIX = "diffq"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Per-job times: a few milliseconds (a 1-step job on an idle worker) to minutes (a backlog).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# One denoiser call: sub-millisecond on a GPU to seconds for a big CPU batch.
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Images or rows per denoiser call: powers of two up to the largest configurable batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def add_build_info(registry: CollectorRegistry, component: str) -> Gauge:
    """``diffq_build_info{version, component, python}`` = 1: which build is running where."""
    info = Gauge(
        f"{PREFIX}_build_info",
        "Build information; the value is always 1.",
        ["version", "component", "python"],
        registry=registry,
        multiprocess_mode="max",
    )
    info.labels(__version__, component, platform.python_version()).set(1)
    return info


def forget_dead_processes(directory: str | None = None) -> list[int]:
    """Drop the files of live-only gauges (``livesum``, ``liveall``...) that processes now gone
    left behind, so a killed process's last value stops counting; the pids dropped. Nothing
    else notices a process that was killed (uvicorn replaces it without telling us)."""
    directory = directory or os.environ.get(MULTIPROC_ENV)
    if not directory:
        return []
    named = (path.stem.rsplit("_", 1)[-1] for path in Path(directory).glob("gauge_live*_*.db"))
    dead = sorted({int(pid) for pid in named if pid.isdigit() and not _alive(int(pid))})
    for pid in dead:
        mark_process_dead(pid, directory)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def merged_registry() -> CollectorRegistry:
    """A registry that reads every process's values (multiprocess mode only), less what
    processes now gone left in live-only gauges."""
    forget_dead_processes()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
