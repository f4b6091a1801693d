"""The worker's own small HTTP server: ``/livez``, ``/readyz`` and ``/metrics``.

Workers pull their work from Redis and never serve the API, so this is not the web stack but a
single-threaded ``selectors`` loop on a daemon thread. It starts before the model loads, so a
probe can tell "loading" (live, not ready) from "dead".

One thread for every connection (the standard library's ``ThreadingHTTPServer``) let any client
that connected and sent nothing hold a thread forever; a thousand of them exhausted the process.
Here a connection is a few hundred bytes of state, and ``ProbeLimits`` bounds the rest: each
request (line and headers) must arrive within ``timeout_seconds`` of the connection opening or of
the previous answer, and fit ``max_header_bytes``; past ``max_connections`` a new connection
closes the one that has waited longest, so parked connections cannot lock a probe out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from diffq.metrics import exposition

if TYPE_CHECKING:
    from workers.config import WorkerSettings

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


class ProbePortError(OSError):
    """The probe port cannot be bound; the message names the port and ``DIFFQ_WORKER_PORT``."""


@dataclass(frozen=True)
class ProbeLimits:
    """Bounds on the probe server's clients (defaults: those of ``WorkerSettings``)."""

    timeout_seconds: float = 10.0
    max_header_bytes: int = 8192
    max_connections: int = 64

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> ProbeLimits:
        """The limits the settings name."""
        return cls(s.probe_timeout_seconds, s.probe_max_header_bytes, s.probe_max_connections)


Route = Callable[[str], tuple[int, bytes, str]]  # path -> status, body, content type

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_MAX_HEADERS = 100
LINGER_BYTES = 1 << 20  # most a closing client may still send before it is cut off


def _error(status: int, kind: str, message: str) -> tuple[int, bytes, str]:
    return status, json.dumps({"error": {"type": kind, "message": message}}).encode(), "application/json"


def probe_routes(health: WorkerHealth) -> Route:
    """The answers: ``/metrics``, ``/livez``, ``/readyz``; anything else is a 404."""

    def probe(ok: bool, checks: dict[str, bool]) -> tuple[int, bytes, str]:
        body = {"status": "ok" if ok else "not ready", "checks": checks}
        return 200 if ok else 503, json.dumps(body).encode(), "application/json"

    def route(path: str) -> tuple[int, bytes, str]:
        if path == "/metrics":
            body, ctype = exposition(health.registry)
            return 200, body, ctype
        if path == "/livez":
            return probe(*health.live(time.monotonic()))
        if path == "/readyz":
            return probe(*health.ready())
        return _error(404, "not_found", f"no route {path}")

    return route


@dataclass
class _Conn:
    sock: socket.socket
    since: float  # start of the wait for its current request: deadline and eviction order
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    close_after: bool = False
    lingering: bool = False  # answered and half-closed: what still comes is read and dropped
    discarded: int = 0


class ProbeServer:
    """GET-only HTTP/1.1 with keep-alive, no bodies, one thread for every connection at once."""

    def __init__(self, host: str, port: int, route: Route, limits: ProbeLimits) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._route = route
        self._limits = limits
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="worker-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving, close every connection and the port (waits for the loop, briefly)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)

    # The loop
    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                for key, events in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        conn = self._conns.get(key.fileobj)  # type: ignore[call-overload]
                        if conn is not None:
                            self._on_event(conn, events)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _next_timeout(self) -> float:
        if not self._conns:
            return 1.0
        first = min(c.since for c in self._conns.values()) + self._limits.timeout_seconds
        return max(0.0, min(1.0, first - time.monotonic()))

    def _expire(self, now: float) -> None:
        cutoff = now - self._limits.timeout_seconds
        for conn in [c for c in self._conns.values() if c.since <= cutoff]:
            if conn.inbox and not conn.outbox and not conn.lingering:
                # It then lingers one more period to take the answer, and goes.
                self._answer(conn, *_error(408, "request_timeout", "request not received in time"), True)
            else:
                self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, say: keep serving those we hold
                log.warning("worker http accept failed", extra={"error": str(e)})
                return
            if len(self._conns) >= self._limits.max_connections:
                self._close(min(self._conns.values(), key=lambda c: c.since))  # the longest waiting
            sock.setblocking(False)
            self._conns[sock] = _Conn(sock, since=time.monotonic())
            self._selector.register(sock, selectors.EVENT_READ)

    def _on_event(self, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush(conn)
            self._handle(conn)  # a pipelined request read before the answer drained
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if conn.lingering:
            conn.discarded += len(data)
            if conn.discarded > LINGER_BYTES:
                self._close(conn)
            return
        conn.inbox += data
        self._handle(conn)

    def _handle(self, conn: _Conn) -> None:
        """Answer the whole requests at the head of ``inbox``, one at a time (a loop, not
        recursion: a client may pipeline thousands in one read)."""
        while conn.sock in self._conns and not conn.outbox and not conn.lingering:
            end = conn.inbox.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.inbox) > self._limits.max_header_bytes:
                    self._too_large(conn)
                return
            if end + 4 > self._limits.max_header_bytes:
                self._too_large(conn)
                return
            head = bytes(conn.inbox[:end])
            del conn.inbox[: end + 4]
            self._answer(conn, *self._respond(head))

    def _too_large(self, conn: _Conn) -> None:
        conn.inbox.clear()
        message = f"request headers exceed {self._limits.max_header_bytes} bytes or {_MAX_HEADERS} fields"
        self._answer(conn, *_error(431, "request_header_fields_too_large", message), close=True)

    def _respond(self, head: bytes) -> tuple[int, bytes, str, bool, bool]:
        """Status, body, content type, whether to close after, whether to send the body."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return (*_error(400, "bad_request", "malformed request line"), True, True)
        method, target, version = parts
        if len(lines) - 1 > _MAX_HEADERS:
            message = f"request headers exceed {self._limits.max_header_bytes} bytes or {_MAX_HEADERS} fields"
            return (*_error(431, "request_header_fields_too_large", message), True, True)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return (*_error(400, "bad_request", "malformed header line"), True, True)
            headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return (*_error(400, "bad_request", "request bodies are not accepted"), True, True)
        if method not in ("GET", "HEAD"):
            return (*_error(405, "method_not_allowed", f"{method} is not allowed; use GET"), True, True)
        status, body, ctype = self._route(target.split("?", 1)[0])
        return status, body, ctype, close, method == "GET"

    def _answer(
        self, conn: _Conn, status: int, body: bytes, ctype: str, close: bool = False, with_body: bool = True
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode("latin-1")
        conn.outbox = head + body if with_body else head
        conn.close_after = close
        conn.since = time.monotonic()  # the client has a period to take the answer
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.outbox = conn.outbox[sent:]
        if conn.outbox:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE)  # stop reading until it drains
            return
        self._selector.modify(conn.sock, selectors.EVENT_READ)
        conn.since = time.monotonic()  # waiting for the next request (or the client's close)
        if conn.close_after:
            # Half-close and drop what still comes: closing with a client's bytes unread would
            # reset the connection, and the client could lose the answer (a 431, say).
            conn.lingering = True
            conn.inbox.clear()
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()


def start_http(
    host: str,
    port: int,
    health: WorkerHealth,
    limits: ProbeLimits | None = None,
    process: str = "worker",
    setting: str = "DIFFQ_WORKER_PORT",
) -> ProbeServer:
    """Serve the probes and metrics on a daemon thread; returns the server (``.shutdown()``).
    ProbePortError when ``host:port`` cannot be bound (the message names ``setting``). The
    webhook deliverer serves its own with it too (``process``)."""
    try:
        server = ProbeServer(host, port, probe_routes(health), limits or ProbeLimits())
    except OSError as e:  # port taken, or an address this host lacks: the operator's to fix
        why = os.strerror(e.errno) if e.errno else str(e)
        raise ProbePortError(
            f"cannot listen on {host}:{port} for the {process}'s probes and metrics ({why}); "
            f"set {setting} to a free port"
        ) from e
    server.start()
    log.info(f"{process} http listening", extra={"host": host, "port": server.server_address[1]})
    return server
