"""Per-connection limits for the gateway's HTTP server: header size and count, read timeouts
(slowloris), idle keep-alive and a bound on connections per process.

uvicorn's httptools protocol has none of the first three: the C parser (llhttp) accepts a header
of any size and httptools gathers it with ``bytes +=`` on every read, so a 16 MB header holds
the event loop for about half a second and larger ones for seconds; a connection that sends a
byte a second is held forever; and ``limit_concurrency`` answers a plain-text 503 to *requests*
while still holding every connection. These limits are enforced in a subclass of that protocol,
below the ASGI app: the app only ever sees a request whose head fitted, and the parser never
holds more than ``max_header_bytes`` (plus at most one read) of an unfinished head.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from service.config import GatewaySettings


@dataclass(frozen=True)
class HttpLimits:
    """What one gateway connection may hold; from ``GatewaySettings`` (picklable, so it reaches
    uvicorn's spawned worker processes)."""

    max_header_bytes: int
    max_headers: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    keep_alive_seconds: float
    max_connections: int

    @classmethod
    def from_settings(cls, s: GatewaySettings) -> HttpLimits:
        """The limits the settings name."""
        return cls(
            max_header_bytes=s.max_header_bytes,
            max_headers=s.max_headers,
            header_timeout_seconds=s.header_timeout_seconds,
            body_timeout_seconds=s.body_timeout_seconds,
            keep_alive_seconds=s.keep_alive_seconds,
            max_connections=s.max_connections,
        )


LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into ``HttpParserCallbackError``."""


def error_bytes(status: int, kind: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete ``Connection: close`` response with the API's error body, for answers the
    protocol writes itself (the ASGI app never saw the request)."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    parts = [STATUS_LINE[status]]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(parts)


async def _overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The app a request on a connection past ``max_connections`` gets: 503, then close."""
    body = json.dumps(
        {"error": {"type": "overloaded", "message": "too many connections to this gateway process; retry"}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The lifespan state's entry (``service.app``) that ends this process's waits and event streams
# when uvicorn starts shutting down: they would otherwise run until its graceful timeout and be cut.
DRAIN = "diffq.drain"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``HttpLimits``:

    - the request line and headers (the *head*) must fit ``max_header_bytes`` and
      ``max_headers``, else ``431 request_header_fields_too_large`` and close; bytes are
      counted before the parser sees them, so an oversized head costs one slice's parse;
    - the head must arrive within ``header_timeout_seconds`` of the connection opening or of
      its first byte after a keep-alive pause, and the body within ``body_timeout_seconds``
      of the head, else ``408 request_timeout`` and close;
    - an idle keep-alive connection closes after ``keep_alive_seconds``;
    - past ``max_connections`` in this process a new connection makes room by closing the
      connection that has waited longest without a request in progress (an idle keep-alive
      or a slow head); when every connection has a request running, the newcomer's request
      gets ``503 overloaded`` (JSON, ``Retry-After``) and its connection is closed.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # uvicorn arms its keep-alive timer with this after each response (its setting is an int).
        self.timeout_keep_alive = limits.keep_alive_seconds  # type: ignore[assignment]
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._head_bytes = 0
        self._head_count = 0
        self._head_too_large = False
        self._waiting_since = self.loop.time()  # start of the current wait for a request: eviction order
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False  # over max_connections with nothing to evict: 503 at the head's end
        self._evicted = False
        self._lingering = False  # answered and half-closed: what still comes is dropped unparsed
        self._discarded = 0

    # Connection life
    def shutdown(self) -> None:
        """uvicorn's shutdown reaching this connection: drain the process's waits first (once
        for all of them), so a wait or stream in progress answers and ends on its own."""
        drain = self.app_state.get(DRAIN)
        if drain is not None:
            drain()
        super().shutdown()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = self.loop.time()
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            self._refused = True
        self._arm(self.limits.header_timeout_seconds, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting(self) -> bool:
        """No request of this connection is being answered: closing it loses no work."""
        return (
            not self._evicted
            and not self._lingering
            and self._in_head
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        )

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a request; False if none waits."""
        # A linear scan, only while over the bound: at 1,000 connections a few tens of microseconds.
        oldest: LimitedHttpToolsProtocol | None = None
        for conn in self.connections:
            if conn is self or not isinstance(conn, LimitedHttpToolsProtocol) or not conn._waiting():
                continue
            if oldest is None or conn._waiting_since < oldest._waiting_since:
                oldest = conn
        if oldest is None:
            return False
        oldest._evicted = True
        oldest.transport.close()
        return True

    # Timers
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._lingering:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head trickles in behind a response on its way: end after that response.
            self.cycle.keep_alive = False
            return
        if self._head_bytes:
            self._reply_and_close(408, "request_timeout", "request headers not received in time")
        else:
            self.transport.close()  # connected and silent: nothing to answer

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            # The app waits on the body (receive()); closing wakes it with a disconnect.
            self._reply_and_close(408, "request_timeout", "request body not received in time")
        else:
            self.transport.close()

    def _reply_and_close(self, status: int, kind: str, message: str) -> None:
        """Answer, then close gently: a client still sending (the rest of a huge header) would
        get a reset, and lose the answer, if the socket closed with its data unread. So half-close,
        discard what still comes for up to ``LINGER_SECONDS`` / ``LINGER_BYTES``, then close."""
        self.transport.write(error_bytes(status, kind, message, self.server_state.default_headers))
        if self._lingering or not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = True
        self._arm(LINGER_SECONDS, self.transport.close)
        self.transport.write_eof()

    # Reading
    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._in_head and self._timer is None:
            self._arm(self.limits.header_timeout_seconds, self._head_timed_out)  # after a keep-alive pause
        view = memoryview(data)
        while view and not self.transport.is_closing():
            if self._in_head:
                # Feed the parser no more of a head than the budget left: the end of the head
                # must show up within it.
                room = self.limits.max_header_bytes - self._head_bytes
                piece, view = view[:room], view[room:]
                self._head_bytes += len(piece)
                if not self._feed(bytes(piece)):
                    return
                if self._in_head and self._head_bytes >= self.limits.max_header_bytes:
                    self._head_too_large = True
                    self._reject_head()
                    return
            else:
                self._feed(bytes(view))
                return

    def _feed(self, data: bytes) -> bool:
        """uvicorn's ``data_received`` with a 431 for our own callback errors; False once the
        connection is done."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._head_too_large:
                self._reject_head()
                return False
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no websockets here (ws="none")
        return True

    def _reject_head(self) -> None:
        message = (
            f"request headers exceed {self.limits.max_header_bytes} bytes or {self.limits.max_headers} fields"
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being written on this connection: end after it instead.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._reply_and_close(431, "request_header_fields_too_large", message)

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_headers:
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.limits.body_timeout_seconds, self._body_timed_out)
        if self._refused:
            app, self.app = self.app, _overloaded
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        # The next request's head (pipelined, or after keep-alive) starts its own budget.
        self._in_head = True
        self._head_bytes = 0
        self._head_count = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._waiting_since = self.loop.time()
