"""Webhook receivers for the tests: real HTTP servers on loopback that record every POST."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


def status(code: int) -> Answer:
    """An empty answer with ``code``."""
    return code, {"content-length": "0"}, b""


@dataclass
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int = 0  # what the receiver answered (0 while it has not)


class Receiver:
    """Answers the ``n``-th POST (0-based) with ``handle(n)``, which may block. Keeps each
    request, and the most that were in flight at once."""

    def __init__(self, handle: Callable[[int], Answer] = lambda _n: status(200)) -> None:
        self.handle = handle
        self.received: list[Received] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                got = Received({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    n = len(receiver.received)
                    receiver.received.append(got)
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    code, headers, payload = receiver.handle(n)
                    got.status = code
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook?from=diffq"

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def wait_delivered(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.delivered())} of {count} delivered: {self.received}"
            )
            time.sleep(0.05)
        return self.delivered()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
