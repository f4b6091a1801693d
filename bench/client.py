"""The benchmarks' side of the API: submit jobs, wait for them, read their timings.

Waiting uses ``Prefer: wait=N`` on ``GET /v1/jobs/{id}`` when the gateway honours it (it says
so with ``Preference-Applied``); otherwise it polls.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bench.workload import Request

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
WAIT_SECONDS = 30


@dataclass(frozen=True)
class Finished:
    """A terminal job as the client read it."""

    id: str
    status: str
    created_at: float  # server clock (gateway), epoch seconds
    started_at: float | None  # server clock (worker)
    finished_at: float | None  # server clock (worker)
    total_ms: float | None
    queue_ms: float | None
    run_ms: float | None

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> Finished:
        t = view["timings"]
        return cls(
            id=view["id"],
            status=view["status"],
            created_at=_epoch(t["created_at"]),
            started_at=_epoch(t["started_at"]) if t["started_at"] else None,
            finished_at=_epoch(t["finished_at"]) if t["finished_at"] else None,
            total_ms=t["total_ms"],
            queue_ms=t["queue_ms"],
            run_ms=t["run_ms"],
        )


class Api:
    """A thread-safe client of one gateway."""

    def __init__(self, base_url: str, poll_seconds: float = 0.05) -> None:
        self.http = httpx.Client(
            base_url=base_url, timeout=WAIT_SECONDS + 10, limits=httpx.Limits(max_connections=64)
        )
        self.poll_seconds = poll_seconds
        self.prefer_wait: bool | None = None  # unknown until the first wait

    def close(self) -> None:
        self.http.close()

    def submit(self, job: Request) -> str:
        return str(self.submit_view(job)["id"])

    def submit_view(self, job: Request) -> dict[str, Any]:
        """The submission's answer: the job view (its estimates among its timings)."""
        r = self.http.post("/v1/jobs", json=job.body())
        if r.status_code != 202:
            raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
        view: dict[str, Any] = r.json()
        return view

    def run(self, job: Request) -> dict[str, Any]:
        """Submit and wait in one request (``Prefer: wait`` on the POST); jobs still running
        when the gateway answers (or a gateway without the option) are waited for as usual."""
        r = self.http.post("/v1/jobs", json=job.body(), headers={"Prefer": f"wait={WAIT_SECONDS}"})
        if r.status_code != 202:
            raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
        view: dict[str, Any] = r.json()
        if "preference-applied" in r.headers:
            self.prefer_wait = True
        return view if view["status"] in TERMINAL else self.wait(str(view["id"]))

    def submit_all(self, jobs: Sequence[Request], threads: int = 4) -> list[str]:
        """Submit as fast as ``threads`` connections allow; ids in the jobs' order."""
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(self.submit, jobs))

    def wait(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        """The job's view once terminal (``Prefer: wait`` when honoured, else polling)."""
        deadline = time.monotonic() + timeout
        while True:
            headers = {"Prefer": f"wait={WAIT_SECONDS}"} if self.prefer_wait is not False else {}
            r = self.http.get(f"/v1/jobs/{job_id}", headers=headers)
            r.raise_for_status()
            view: dict[str, Any] = r.json()
            terminal = view["status"] in TERMINAL
            if "preference-applied" in r.headers:
                self.prefer_wait = True
            elif not terminal and self.prefer_wait is None:
                self.prefer_wait = False  # it answered at once: the gateway does not hold requests
            if terminal:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {view['status']} after {timeout}s")
            if not self.prefer_wait:
                time.sleep(self.poll_seconds)

    def wait_all(self, ids: Sequence[str], timeout: float = 600) -> list[Finished]:
        """Every job once terminal, one wait at a time (so waiting adds next to no load)."""
        deadline = time.monotonic() + timeout
        return [Finished.from_view(self.wait(i, max(1.0, deadline - time.monotonic()))) for i in ids]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads only the status
    line and ``content-length`` of each answer: a load generator that costs the machine far less
    CPU than a full client, so the server under test gets the cores."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, raw: bytes) -> int:
        """Send ``raw`` (a whole request) and return the answer's status code."""
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, length = parse_head(head)
        while len(self.buffer) < length:
            self._read()
        self.buffer = self.buffer[length:]
        return status

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def parse_head(head: bytes) -> tuple[int, int]:
    """(status code, content-length) of a response head; answers without a length are refused
    (the servers measured here always send one)."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value.strip())
    raise ValueError(f"response without content-length: {lines[0]!r}")


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """A complete keep-alive ``POST`` with a JSON body, ready for ``RawConnection.request``."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
