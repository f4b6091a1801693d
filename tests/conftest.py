"""Fixtures that start real servers: an embedded Valkey, gateway and worker processes.

Every server listens on a free loopback port and is stopped after use; each test gets its own
Redis key prefix, so tests sharing one Valkey never see each other's jobs.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from diffq.serve import free_port, start_valkey, wait_for_http
from workers.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_valkey(tmp_path_factory.mktemp("valkey"), port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@dataclass
class Stack:
    """A gateway and workers as real processes, sharing one Valkey."""

    env: dict[str, str]
    base_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path | None = None
    worker_urls: dict[str, str] = field(default_factory=dict)  # name -> its probes/metrics server

    def start_gateway(self) -> None:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._spawn("gateway", ["gateway"], {"PORT": str(port)})
        if not wait_for_http(f"{self.base_url}/livez", timeout=30):
            raise RuntimeError(f"gateway did not start; log: {self.read_log('gateway')}")

    def start_worker(self, name: str, **env: str) -> None:
        port = free_port()
        self.worker_urls[name] = f"http://127.0.0.1:{port}"
        self._spawn(name, ["worker", "--name", name], {"DIFFQ_WORKER_PORT": str(port), **env})

    def start_webhooks(self, name: str = "webhooks", **env: str) -> None:
        """A webhook deliverer (``diffq webhooks run``), its probes and metrics on a port of its own."""
        port = free_port()
        self.worker_urls[name] = f"http://127.0.0.1:{port}"
        self._spawn(name, ["webhooks", "run"], {"DIFFQ_WEBHOOK_PORT": str(port), **env})

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the gateway and every started worker (and deliverer) answer ``/readyz`` with 200."""
        for url in [self.base_url, *self.worker_urls.values()]:
            if not wait_for_http(f"{url}/readyz", timeout):
                raise RuntimeError(f"{url} not ready; logs: {[self.read_log(n) for n in self.procs]}")

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> None:
        assert self.logs is not None
        log = (self.logs / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "diffq", *args],
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def read_log(self, name: str) -> str:
        assert self.logs is not None
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, timeout=15)


def free_port_range(count: int) -> int:
    """A port ``p`` with ``p .. p + count - 1`` all free now (worker-N of ``diffq serve`` binds
    its probe port at a base + N), below the kernel's ephemeral range: a port in that range can
    be taken at any moment as the local end of an outgoing connection, and Linux gives connect()
    even ports and bind(0) odd ones, so ``free_port() + 1`` is just the kind a connection takes
    (CI once saw worker-1's port held for a minute that way)."""
    low = _ephemeral_low()
    top = low - count if low - count > 10_000 else 65_536 - count  # a range set that low: anywhere
    for _ in range(200):
        base = random.randrange(10_000, top)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found below {top}")


def _ephemeral_low() -> int:
    """The first port the kernel hands out to connections and to bind(0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stack_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_") or k == "DIFFQ_MODEL_STORE"}
    env.update(
        REDIS_URL=redis_url,
        DIFFQ_KEY_PREFIX=prefix,
        DIFFQ_HEARTBEAT_SECONDS="0.5",
        DIFFQ_INTRA_OP_THREADS="2",
        DIFFQ_WORKER_PORT=str(free_port()),  # Stack.start_worker gives each worker its own
        DIFFQ_AUTH="off",  # tests of auth turn it on with their own keys
        DIFFQ_MAX_BATCH_ROWS="64",  # fixed, not measured at start: quicker and the same everywhere
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@pytest.fixture
def make_stack(valkey: str, prefix: str, tmp_path: Path) -> Iterator[type[Stack]]:
    """Factory: ``make_stack(**env)`` returns a Stack (nothing started yet)."""
    stacks: list[Stack] = []

    def factory(**extra: str) -> Stack:
        s = Stack(env=stack_env(valkey, prefix, **extra), logs=tmp_path)
        stacks.append(s)
        return s

    yield factory  # type: ignore[misc]
    for s in stacks:
        s.stop_all()


def wait_for(client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    """Poll a job until its status is in ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {job}")


def worker_settings(redis_url: str, prefix: str, **extra: Any) -> WorkerSettings:
    """Settings for a worker built in this process: a fixed tick (not measured at start),
    two engine threads, quick heartbeats; ``extra`` overrides any of them."""
    values: dict[str, Any] = {
        "max_batch_rows": 64,
        "intra_op_threads": 2,
        "heartbeat_seconds": 0.2,
        **extra,
    }
    return WorkerSettings(redis_url=redis_url, key_prefix=prefix, **values)
