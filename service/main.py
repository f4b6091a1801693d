"""`diffq gateway`: run the HTTP gateway under uvicorn, in one or several processes.

With several processes, Prometheus values live in files under ``PROMETHEUS_MULTIPROC_DIR``
and each scrape merges them. The directory must exist, be empty at start (files left by an
earlier run would be counted again) and be set before ``prometheus_client`` is imported, so
this module imports the app only inside the functions below.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from diffq import heap
from diffq.logs import setup_logging
from service.config import GatewaySettings
from service.limits import HttpLimits, LimitedHttpToolsProtocol

log = logging.getLogger("diffq.gateway")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # not from diffq.metrics: that imports prometheus_client


def prepare_metrics_dir() -> tuple[Path, bool]:
    """An empty multiprocess directory: ``PROMETHEUS_MULTIPROC_DIR`` if set, else a new temp dir
    (and whether it is ours to remove)."""
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="diffq-prom-"))
    if configured and path.exists():
        for child in path.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)  # inherited by uvicorn's worker processes
    return path, not configured


def app_factory() -> FastAPI:
    """What each uvicorn process builds (settings read from the environment, once)."""
    from service.app import create_app

    settings = GatewaySettings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    heap.settle()
    return app


def raise_open_files_limit(connections: int) -> None:
    """Lift the soft open-files limit (toward the hard one) so ``connections`` sockets fit with
    room for Redis, logs and the metrics files; uvicorn's processes inherit it."""
    want = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < want:
        log.warning(
            "open-files limit below DIFFQ_MAX_CONNECTIONS", extra={"limit": new, "connections": connections}
        )


def http_protocol(settings: GatewaySettings) -> Any:
    """uvicorn's ``http=``: the httptools protocol with this gateway's header, timeout and
    connection limits (a partial of a module-level class: it pickles into spawned processes)."""
    return functools.partial(LimitedHttpToolsProtocol, limits=HttpLimits.from_settings(settings))


def run_gateway(settings: GatewaySettings) -> None:
    setup_logging(settings.log_level)
    raise_open_files_limit(settings.max_connections)
    metrics_dir, ours = prepare_metrics_dir()
    try:
        uvicorn.run(
            "service.main:app_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.processes,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            http=http_protocol(settings),
            ws="none",  # no websocket routes; an upgrade would also leave the limits' protocol
        )
    finally:
        if ours:
            shutil.rmtree(metrics_dir, ignore_errors=True)
