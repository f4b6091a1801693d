"""Figure 5: job submissions per second, the gateway against a bare endpoint.

Both serve ``POST /v1/jobs`` with the same uvicorn process count on the same Valkey, with no
worker consuming, and take the same load: ``concurrency`` keep-alive connections, each sending
its next request as soon as the last is answered, for ``seconds`` after a short warm-up. The
gateway runs with auth off and its limits out of the way, but does everything else it does in
production (validation, rate-limit bucket, the submit script, the queue position, a log line).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.client import RawConnection, post_request
from bench.engine import MODEL
from bench.stack import BenchStack
from bench.stats import ratio
from diffq.store import RedisStore

BODY = json.dumps({"class_label": 7, "steps": 8, "seed": 1}).encode()
WARMUP_SECONDS = 0.5


@dataclass(frozen=True)
class Throughput:
    accepted: int
    rejected: int  # answers other than 202
    seconds: float
    per_second: float
    first_third_per_second: float  # the gateway slows down as the queue grows: shown here
    last_third_per_second: float


@dataclass(frozen=True)
class GatewayThroughput:
    concurrency: int
    processes: int
    rounds: int
    gateway: Throughput
    bare: Throughput
    queued_after: int  # jobs waiting in the gateway's queue at the end

    @property
    def efficiency(self) -> float:
        return ratio(self.gateway.per_second, self.bare.per_second)


def measure_gateway(stack: BenchStack, concurrency: int, seconds: float, rounds: int) -> GatewayThroughput:
    """Alternate gateway and bare endpoint ``rounds`` times; the worker must be stopped."""
    stack.stop_worker()
    bare_url, bare = stack.start_bare_app(f"bench:bare:{uuid.uuid4().hex[:8]}")
    gateway_runs, bare_runs = [], []
    try:
        for _ in range(rounds):
            gateway_runs.append(hammer(stack.base_url, concurrency, seconds))
            bare_runs.append(hammer(bare_url, concurrency, seconds))
    finally:
        bare.terminate()
        bare.wait(15)
    queued = _queued(stack)
    return GatewayThroughput(
        concurrency, stack.gateway_processes, rounds, _mean(gateway_runs), _mean(bare_runs), queued
    )


def hammer(base_url: str, concurrency: int, seconds: float) -> Throughput:
    """Closed-loop load on ``POST /v1/jobs``: completion times of every answer, by status."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    raw = post_request(host, port, "/v1/jobs", BODY)
    begin = time.perf_counter() + WARMUP_SECONDS
    end = begin + seconds
    done: list[list[tuple[float, int]]] = [[] for _ in range(concurrency)]

    def client(out: list[tuple[float, int]]) -> None:
        conn = RawConnection(host, port)
        try:
            while (now := time.perf_counter()) < end:
                status = conn.request(raw)
                if now >= begin:
                    out.append((time.perf_counter(), status))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(out,)) for out in done]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers = sorted(a for out in done for a in out if a[0] <= end)
    ok = [t for t, status in answers if status == 202]
    third = seconds / 3
    return Throughput(
        accepted=len(ok),
        rejected=len(answers) - len(ok),
        seconds=seconds,
        per_second=len(ok) / seconds,
        first_third_per_second=sum(t < begin + third for t in ok) / third,
        last_third_per_second=sum(t >= end - third for t in ok) / third,
    )


def _mean(runs: list[Throughput]) -> Throughput:
    n = len(runs)
    return Throughput(
        accepted=sum(r.accepted for r in runs),
        rejected=sum(r.rejected for r in runs),
        seconds=sum(r.seconds for r in runs),
        per_second=sum(r.per_second for r in runs) / n,
        first_third_per_second=sum(r.first_third_per_second for r in runs) / n,
        last_third_per_second=sum(r.last_third_per_second for r in runs) / n,
    )


def _queued(stack: BenchStack) -> int:
    store = RedisStore(stack.redis_url, stack.stack.env["DIFFQ_KEY_PREFIX"])
    try:
        return store.queue_stats(MODEL).depth
    finally:
        store.close()
