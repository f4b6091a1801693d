"""One caller must not starve the others: header size and count bounds (431), slow and idle
connections cut off (408 / close), and a bound on connections, on the gateway (a real process)
and on a worker's probe port (a real worker, and the same server in-process with short limits).

Every client here is a raw loopback socket, so the tests see exactly what reaches the server;
every loop is bounded and ends by itself.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack
from workers.http import ProbeLimits, WorkerHealth, start_http

LIVEZ = b"GET /livez HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data`` (a server that answers early may cut the send short), read until the
    server closes; the answer and the seconds it took."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out, time.monotonic() - start


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def error_type(answer: bytes) -> str:
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return str(body["error"]["type"])


def trickle(
    port: int, data: bytes, interval: float, limit: float, prefix: bytes = b""
) -> tuple[bytes, float]:
    """Send ``prefix`` at once, then ``data`` a byte every ``interval`` seconds (a slowloris)
    until the server answers or closes, or ``limit`` seconds pass; what came back and when."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(prefix)
        s.settimeout(interval)
        for i in range(len(data)):
            if time.monotonic() - start > limit:
                break
            try:
                s.sendall(data[i : i + 1])
                answer = s.recv(65536)
            except TimeoutError:
                continue  # nothing from the server yet: next byte
            except OSError:
                return b"", time.monotonic() - start  # reset
            # The server spoke (an answer) or closed (b""): read the rest of it.
            s.settimeout(2)
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except OSError:
                pass
            return answer, time.monotonic() - start
    return b"still open", time.monotonic() - start


def closed_count(socks: list[socket.socket], settle: float = 3.0) -> int:
    """How many of ``socks`` the server has closed (waits until the count holds for a moment)."""
    for s in socks:
        s.setblocking(False)  # a socket with a timeout would wait for data on each peek
    deadline = time.monotonic() + settle
    last, closed = -1, 0
    while time.monotonic() < deadline:
        closed = 0
        for s in socks:
            try:
                closed += s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1  # reset
        if closed == last:
            break
        last = closed
        time.sleep(0.3)
    return closed


def park(port: int, count: int, partial: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if partial:
            s.sendall(partial)
        socks.append(s)
    return socks


@pytest.fixture
def gateway(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    def start(**env: str) -> Stack:
        stack: Stack = make_stack(**env)
        stack.start_gateway()
        return stack

    return start


def test_huge_or_many_headers_get_431_fast_and_others_are_served(gateway: Callable[..., Stack]) -> None:
    stack = gateway()
    port = _port(stack.base_url)
    big = b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer, _ = exchange(port, big)
    assert status_of(answer) == 431, answer[:200]
    assert error_type(answer) == "request_header_fields_too_large"
    many = b"GET /livez HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n"
    answer, _ = exchange(port, many)
    assert status_of(answer) == 431 and error_type(answer) == "request_header_fields_too_large"
    # Right after, another client is served, and a large but allowed head (12 KiB, 90 fields) too.
    assert httpx.get(f"{stack.base_url}/livez", timeout=5).status_code == 200
    fits = {"X-Pad": "b" * 12_000, **{f"X-{i}": "v" for i in range(88)}}
    assert httpx.get(f"{stack.base_url}/livez", headers=fits, timeout=5).status_code == 200


def test_slow_and_idle_clients_are_cut_off_while_others_are_served(gateway: Callable[..., Stack]) -> None:
    stack = gateway(
        DIFFQ_HEADER_TIMEOUT_SECONDS="1", DIFFQ_BODY_TIMEOUT_SECONDS="1", DIFFQ_KEEP_ALIVE_SECONDS="1"
    )
    port = _port(stack.base_url)
    results: dict[str, tuple[bytes, float]] = {}
    head = b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 200 + b"\r\n\r\n"
    body_head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    slow = [
        threading.Thread(target=lambda: results.update(head=trickle(port, head, 0.25, 8))),
        threading.Thread(
            target=lambda: results.update(body=trickle(port, b"{" + b" " * 199, 0.25, 8, prefix=body_head))
        ),
    ]
    for t in slow:
        t.start()
    codes: list[int] = []
    while any(t.is_alive() for t in slow) and len(codes) < 200:  # others are served meanwhile
        codes.append(status_of(exchange(port, LIVEZ, timeout=5)[0]))
        time.sleep(0.05)
    for t in slow:
        t.join(15)
    assert codes and set(codes) == {200}, codes
    answer, took = results["head"]  # its last byte would come after 50 s
    assert status_of(answer) == 408 and error_type(answer) == "request_timeout", answer[:200]
    assert b"headers not received" in answer and 0.9 <= took < 4, took
    answer, took = results["body"]  # headers at once, then the body a byte at a time
    assert status_of(answer) == 408 and b"body not received" in answer, answer[:200]
    assert 0.9 <= took < 4, took

    # A silent new connection and an idle keep-alive one are closed after their timeouts.
    with socket.create_connection(("127.0.0.1", port), timeout=6) as s:
        start = time.monotonic()
        assert s.recv(1) == b""
        assert 0.9 <= time.monotonic() - start < 4
    with socket.create_connection(("127.0.0.1", port), timeout=6) as s:
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        first = s.recv(65536)
        assert status_of(first) == 200 and b"connection: close" not in first.lower()
        start = time.monotonic()
        while s.recv(65536):
            pass
        assert 0.9 <= time.monotonic() - start < 4


def test_parked_connections_do_not_lock_out_the_gateway(gateway: Callable[..., Stack]) -> None:
    stack = gateway(DIFFQ_MAX_CONNECTIONS="100")
    port = _port(stack.base_url)
    parked = park(port, 150) + park(port, 50, partial=b"GET /livez HTTP/1.1\r\nHost: t\r\n")
    try:
        for _ in range(5):
            assert httpx.get(f"{stack.base_url}/livez", timeout=5).status_code == 200
        # The gateway holds at most 100: the ones waiting longest made room for the newcomers.
        assert closed_count(parked) >= 200 - 100
    finally:
        for s in parked:
            s.close()


def test_past_the_bound_with_every_connection_busy_a_request_gets_503_json(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway(DIFFQ_MAX_CONNECTIONS="2")
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job = client.post("/v1/jobs", json={"class_label": 1, "steps": 4, "seed": 3}).json()  # stays queued
    url = f"{stack.base_url}/v1/jobs/{job['id']}"
    waits = [
        threading.Thread(target=lambda: httpx.get(url, headers={"Prefer": "wait=3"}, timeout=10))
        for _ in range(2)
    ]
    for t in waits:
        t.start()
    time.sleep(0.8)  # both are waiting on the job (no worker)
    r = httpx.get(f"{stack.base_url}/livez", timeout=5)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded", r.text
    assert r.headers["Retry-After"] == "1" and r.headers["Connection"] == "close"
    for t in waits:
        t.join(15)
    assert httpx.get(f"{stack.base_url}/livez", timeout=5).status_code == 200


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_a_thousand_parked_connections_do_not_stop_a_workers_livez(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    stack.start_worker("w1")
    url = stack.worker_urls["w1"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the probe server starts before the model loads
        try:
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    pid = stack.procs["w1"].pid
    before = _threads(pid)
    parked = park(_port(url), 1000)
    try:
        start = time.monotonic()
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
        assert time.monotonic() - start < 2
        assert _threads(pid) < before + 50  # no thread per connection
        assert closed_count(parked) >= 1000 - ProbeLimits().max_connections
    finally:
        for s in parked:
            s.close()


def test_probe_port_bounds_headers_and_slow_clients() -> None:
    server = start_http(
        "127.0.0.1", 0, WorkerHealth(stall_seconds=60), ProbeLimits(timeout_seconds=1, max_connections=16)
    )
    port = server.server_address[1]
    try:
        answer, _ = exchange(port, b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
        assert status_of(answer) == 431 and error_type(answer) == "request_header_fields_too_large"
        results: dict[str, tuple[bytes, float]] = {}
        head = b"GET /livez HTTP/1.1\r\nX-Slow: " + b"z" * 100 + b"\r\n\r\n"
        slow = threading.Thread(target=lambda: results.update(head=trickle(port, head, 0.25, 8)))
        slow.start()
        codes: list[int] = []
        while slow.is_alive() and len(codes) < 200:
            codes.append(status_of(exchange(port, LIVEZ, timeout=5)[0]))
            time.sleep(0.05)
        slow.join(10)
        assert codes and set(codes) == {200}, codes
        answer, took = results["head"]  # its last byte would come after 30 s
        assert status_of(answer) == 408 and error_type(answer) == "request_timeout", answer[:200]
        assert 0.9 <= took < 4, took

        parked = park(port, 40)  # past max_connections: those waiting longest make room
        try:
            assert status_of(exchange(port, LIVEZ, timeout=5)[0]) == 200
            assert closed_count(parked) >= 40 - 16
        finally:
            for s in parked:
                s.close()

        # Keep-alive: two pipelined requests answered on one connection, then closed once idle.
        with socket.create_connection(("127.0.0.1", port), timeout=6) as s:
            s.sendall(b"GET /livez HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n")
            answers = b""
            start = time.monotonic()
            while chunk := s.recv(65536):
                answers += chunk
            assert answers.count(b"HTTP/1.1 200") == 1 and answers.count(b"HTTP/1.1 503") == 1  # not loaded
            assert 0.9 <= time.monotonic() - start < 4
    finally:
        server.shutdown()
