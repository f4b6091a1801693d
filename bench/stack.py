"""The stack the benchmarks measure: an embedded Valkey, one gateway and one worker process.

Reuses the test harness (``tests.conftest.Stack``) with production-like settings: auth off,
limits out of the way (a benchmark must not be rate limited), heartbeats at their default,
INFO logs to files as in production.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import get_args

import httpx

from bench.client import Api
from bench.workload import uniform_jobs
from diffq.serve import free_port, start_valkey, wait_for_http
from tests.conftest import ROOT, Stack, stack_env
from workers.config import WorkerSettings

WORKER = "worker"
FALLBACK_TICK_ROWS = 64  # a worker that does not export its tick size (older code) uses this
WORKER_SAMPLES = (
    "diffq_worker_tick_rows",
    "diffq_worker_backlog_rows",
    "diffq_denoiser_call_duration_seconds_sum",
    "diffq_denoiser_call_duration_seconds_count",
    "diffq_batch_rows_sum",
    "diffq_worker_busy_seconds_total",
)


def batching_modes() -> tuple[str, ...]:
    """The worker's batching modes, ``("continuous",)`` where ``DIFFQ_BATCHING`` does not exist."""
    field = WorkerSettings.model_fields.get("batching")
    return tuple(get_args(field.annotation)) if field is not None else ("continuous",)


class BenchStack:
    """Valkey, a gateway and (at most) one worker; ``close`` stops them all."""

    def __init__(
        self,
        threads: int,
        max_batch_rows: int | None,
        gateway_processes: int,
        backlog_rows: int | None = None,
        model_store: Path | None = None,
    ) -> None:
        """``model_store``: the store the gateway and worker serve (None: the repository's)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="diffq-bench-")
        self.dir = Path(self._tmp.name)
        self.valkey_port = free_port()
        self._valkey = start_valkey(self.dir / "valkey", self.valkey_port)
        self.redis_url = f"redis://127.0.0.1:{self.valkey_port}/0"
        self.threads = threads
        self.max_batch_rows = max_batch_rows  # None: the worker's default (measured at start-up)
        self.backlog_batch_rows = backlog_rows  # None: the worker's default (the same way)
        self.gateway_processes = gateway_processes
        env = stack_env(
            self.redis_url,
            f"bench{uuid.uuid4().hex[:8]}",
            DIFFQ_HEARTBEAT_SECONDS="2",
            DIFFQ_INTRA_OP_THREADS=str(threads),
            DIFFQ_RATE_LIMIT_PER_SECOND="100000",
            DIFFQ_RATE_LIMIT_BURST="1000000",
            DIFFQ_MAX_JOBS_IN_FLIGHT_PER_KEY="0",
            DIFFQ_MAX_QUEUED_EVALUATIONS="0",
            DIFFQ_MAX_QUEUED_EVALUATIONS_PER_KEY="0",  # the gateway rounds queue tens of thousands
            DIFFQ_GATEWAY_PROCESSES=str(gateway_processes),
            **({"DIFFQ_MODEL_STORE": str(model_store)} if model_store is not None else {}),
        )
        env.pop("DIFFQ_MAX_BATCH_ROWS", None)  # the test harness pins it; here the worker decides
        self.stack = Stack(env=env, logs=self.dir)
        self.worker_mode: str | None = None
        self.tick_rows = max_batch_rows or FALLBACK_TICK_ROWS
        self.backlog_rows = max(self.tick_rows, backlog_rows or 0)
        self.max_wait_ms: int = WorkerSettings.model_fields["max_wait_ms"].default

    @property
    def base_url(self) -> str:
        return self.stack.base_url

    def start_gateway(self) -> None:
        self.stack.start_gateway()
        if not wait_for_http(f"{self.base_url}/readyz", 60):
            raise RuntimeError(f"gateway not ready: {self.stack.read_log('gateway')}")

    def start_worker(self, batching: str = "continuous") -> None:
        """A worker in ``batching`` mode, ready; its tick size is read back from its metrics."""
        self.stop_worker()
        env = {"DIFFQ_BATCHING": batching}
        if self.max_batch_rows:
            env["DIFFQ_MAX_BATCH_ROWS"] = str(self.max_batch_rows)
        if self.backlog_batch_rows:
            env["DIFFQ_BACKLOG_BATCH_ROWS"] = str(self.backlog_batch_rows)
        self.stack.start_worker(WORKER, **env)
        url = self.stack.worker_urls[WORKER]
        if not wait_for_http(f"{url}/readyz", 120):
            raise RuntimeError(f"worker not ready: {self.stack.read_log(WORKER)}")
        self.worker_mode = batching
        metrics = self.worker_metrics()
        rows = metrics.get("diffq_worker_tick_rows")
        self.tick_rows = int(rows) if rows else self.max_batch_rows or FALLBACK_TICK_ROWS
        self.backlog_rows = int(metrics.get("diffq_worker_backlog_rows") or self.tick_rows)
        # Later workers (another batching mode) use the same sizes, without measuring again.
        self.max_batch_rows, self.backlog_batch_rows = self.tick_rows, self.backlog_rows
        self._warm_up()

    def start_simulated_worker(self, device: str, **env: str) -> None:
        """A worker on a simulated denoiser (``python -m bench.simulated_worker``, see
        ``bench.simulated``) in the worker's place, started but not waited for (on a backlog it
        drains at once); ``env`` adds to the stack's environment (``DIFFQ_MAX_BATCH_ROWS`` defaults
        to the stack's tick)."""
        self.stop_worker()
        port = free_port()
        self.stack.worker_urls[WORKER] = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "bench.simulated_worker", "--device", device, "--name", WORKER]
        env = {"DIFFQ_WORKER_PORT": str(port), "DIFFQ_MAX_BATCH_ROWS": str(self.tick_rows), **env}
        with (self.dir / f"{WORKER}.log").open("wb") as log:  # the child keeps its own copy
            self.stack.procs[WORKER] = subprocess.Popen(
                args, env={**self.stack.env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.worker_mode = f"simulated {device}"

    def wait_worker_ready(self, timeout: float = 120) -> None:
        if not wait_for_http(f"{self.stack.worker_urls[WORKER]}/readyz", timeout):
            raise RuntimeError(f"worker not ready: {self.stack.read_log(WORKER)}")

    def _warm_up(self) -> None:
        """A fresh worker's first calls at each batch size are slow (onnxruntime sizes its buffers):
        a burst of short jobs fills its batch, at the backlog size, once before anything is
        measured."""
        api = Api(self.base_url)
        try:
            jobs = uniform_jobs(max(2, self.backlog_rows), "dpmpp_2m", 4, 1.5, seed=7)
            api.wait_all(api.submit_all(jobs))
        finally:
            api.close()

    def worker_exposition(self) -> str:
        """The worker's whole ``/metrics`` text."""
        return httpx.get(f"{self.stack.worker_urls[WORKER]}/metrics", timeout=5).text

    def worker_metrics(self, exposition: str | None = None) -> dict[str, float]:
        """The worker's counters the benchmarks read (absent ones left out), from
        ``exposition`` when the caller has it already."""
        text = self.worker_exposition() if exposition is None else exposition
        values = {name: _sample(text, name) for name in WORKER_SAMPLES}
        return {name: v for name, v in values.items() if v is not None}

    def stop_worker(self) -> None:
        if WORKER in self.stack.procs:
            self.stack.stop(WORKER)
        self.worker_mode = None

    def start_bare_app(self, stream: str) -> tuple[str, subprocess.Popen[bytes]]:
        """The gateway benchmark's baseline (``bench.bare_app``) under uvicorn, as many processes
        as the gateway has; returns its URL and process."""
        port = free_port()
        args = [
            sys.executable, "-m", "uvicorn", "bench.bare_app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.gateway_processes),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        env = {**self.stack.env, "BENCH_REDIS_URL": self.redis_url, "BENCH_STREAM": stream}
        with (self.dir / "bare.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        if not wait_for_http(f"{url}/livez", 60):
            proc.kill()
            raise RuntimeError(f"bare app did not start: {(self.dir / 'bare.log').read_text()[-2000:]}")
        return url, proc

    def close(self) -> None:
        try:
            self.stack.stop_all()
        finally:
            self._valkey.terminate()
            try:
                self._valkey.wait(10)
            except subprocess.TimeoutExpired:
                self._valkey.kill()
            self._tmp.cleanup()


def _sample(exposition: str, name: str) -> float | None:
    """The first sample named ``name`` in a Prometheus text exposition, if any."""
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", exposition, re.MULTILINE)
    return float(match.group(1)) if match else None
