"""The worker's own small HTTP server: ``/livez``, ``/readyz`` and ``/metrics``.

Workers pull their work from Redis and never serve the API, so this is the standard
library's threaded server, not the web stack. It starts before the model loads, so a
probe can tell "loading" (live, not ready) from "dead".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry

from diffq.metrics import exposition

log = logging.getLogger("diffq.worker")


@dataclass
class WorkerHealth:
    """What the probes read; the worker fills it in as it starts, runs and stops."""

    stall_seconds: float
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    loaded: bool = False
    stopping: Callable[[], bool] = lambda: False
    last_tick: Callable[[], float | None] = lambda: None  # monotonic time of the loop's last turn
    redis_ok: Callable[[], bool] = lambda: False

    def live(self, now: float) -> tuple[bool, dict[str, bool]]:
        tick = self.last_tick()
        looping = tick is None or now - tick <= self.stall_seconds
        return looping, {"loop": looping}

    def ready(self) -> tuple[bool, dict[str, bool]]:
        checks = {
            "model": self.loaded,
            "redis": self.loaded and self.redis_ok(),
            "accepting": not self.stopping(),
        }
        return all(checks.values()), checks


def start_http(host: str, port: int, health: WorkerHealth) -> ThreadingHTTPServer:
    """Serve the probes and metrics on a daemon thread; returns the server (``.shutdown()``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype = exposition(health.registry)
                self._send(200, body, ctype)
            elif path == "/livez":
                self._probe(*health.live(time.monotonic()))
            elif path == "/readyz":
                self._probe(*health.ready())
            else:
                err = {"error": {"type": "not_found", "message": f"no route {path}"}}
                self._send(404, json.dumps(err).encode(), "application/json")

        def _probe(self, ok: bool, checks: dict[str, bool]) -> None:
            body = {"status": "ok" if ok else "not ready", "checks": checks}
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    log.info("worker http listening", extra={"host": host, "port": server.server_address[1]})
    return server
