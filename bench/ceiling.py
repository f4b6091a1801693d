"""Figures 7 and 8: the real worker around a simulated denoiser (``bench.simulated``).

7. Zero-cost ceiling. A denoiser that costs nothing: one worker drains a queue prefilled over
   HTTP (no worker running meanwhile), timed from the first job's ``started_at`` to the last
   one's ``finished_at``. What Valkey did meanwhile comes from ``INFO commandstats`` (deltas,
   the INFO calls and the worker's own start-up left out) and the worker's requests from its
   redis-py connections (``bench.simulated_worker``); the drain cost is also expressed in
   sequential PING round trips per job, measured from one client on the same Valkey in the
   same run. Then end to end: clients in closed loop submit and wait (``Prefer: wait``).
8. Simulated device. The measured H200 curve replayed: a backlog of default jobs through the
   gateway and one worker, its rows per second against the curve's best.
9. The tiny SD pipeline's ceiling: figure 7's drain for a text-to-image model, with its three
   stages (text encoder, denoiser, VAE decoder) all free (``bench.simulated.SimulatedComponent``)
   and a prompt of its own per job, against figure 7's drain of the same jobs' shape: what the
   worker's host work around the two extra stages costs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.client import Api
from bench.simulated import H200_CURVE, ROUND_TRIPS_EVERY
from bench.stack import WORKER, BenchStack
from bench.stats import median, ratio
from bench.workload import Request, uniform_jobs, unique_prompt_jobs
from diffq.jobs import Job, Status
from diffq.store import RedisStore
from workers.batching import tick_rows

ZERO_JOB = ("dpmpp_2m", 8, 1.0)  # sampler, steps, guidance: unguided, one row per image
DEFAULT_JOB = ("dpmpp_2m", 8, 1.5)  # mnist-cfg-unet's defaults: guided, two rows per image
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
NOT_COUNTED = ("info",)  # the benchmark's own reads of the counters
FINISHED = "diffq_jobs_finished_total"
# Polls of the worker's metrics for the end of a run: each scrape costs the worker, and the
# times measured come from the records, so a slow poll loses nothing.
POLL_SECONDS = 0.25
# Closed-loop clients end to end: the gateway's default DIFFQ_MAX_WAITERS_PER_KEY (more waiting
# requests of one key are refused with 429).
END_TO_END_CLIENTS = 32


@dataclass(frozen=True)
class EngineShare:
    """The worker's denoiser calls over a window, from its metrics."""

    seconds: float
    calls: int
    rows: int


@dataclass(frozen=True)
class DrainedJobs:
    """``jobs`` queued jobs of one shape, drained by one worker on a simulated device."""

    jobs: int
    sampler: str
    steps: int
    guidance_scale: float
    rows_per_job: int  # denoiser rows per step of one job
    max_batch_rows: int
    seconds: float  # first started_at to last finished_at
    failed: int
    engine: EngineShare | None

    @property
    def jobs_per_second(self) -> float:
        return ratio(self.jobs - self.failed, self.seconds)

    @property
    def image_steps_per_second(self) -> float:
        return self.jobs_per_second * self.steps


@dataclass(frozen=True)
class Drain(DrainedJobs):
    """Figures 7 and 8: a drain with what Valkey and the worker's connections did meanwhile."""

    device: str
    commands: int  # Valkey commands over the drain, INFO and the worker's start-up left out
    script_calls: int  # of which EVALSHA / FCALL (each one round trip)
    round_trips: int | None  # the worker's requests to Redis over the drain, start-up left out
    worker_commands: int | None  # the commands in them (a script's own calls not counted)
    background_commands: int  # commands by others (the gateway idle) over the same time, left out
    startup_commands: int  # commands of a worker starting on an empty queue, left out
    top_commands: tuple[tuple[str, int], ...]  # the most called, with their counts
    ping_per_second: float  # sequential PING round trips from one client, same Valkey, same run
    ping_range: tuple[float, float]  # the slowest and fastest of its windows, before and after

    @property
    def rows_per_second(self) -> float:
        return self.image_steps_per_second * self.rows_per_job

    @property
    def commands_per_job(self) -> float:
        return ratio(self.commands, self.jobs)

    @property
    def script_calls_per_job(self) -> float:
        return ratio(self.script_calls, self.jobs)

    @property
    def round_trips_per_job(self) -> float | None:
        return None if self.round_trips is None else ratio(self.round_trips, self.jobs)

    @property
    def worker_commands_per_job(self) -> float | None:
        return None if self.worker_commands is None else ratio(self.worker_commands, self.jobs)

    @property
    def ping_per_job(self) -> float:
        """The drain's cost per job in PING round trips: how many PINGs one client could have
        made in the time the worker took per job."""
        return ping_per_job(self.ping_per_second, self.jobs_per_second)


@dataclass(frozen=True)
class EndToEnd:
    """Closed-loop clients submitting with ``Prefer: wait`` on the zero-cost worker."""

    clients: int
    seconds: float
    succeeded: int
    other: int  # answers that were not a success

    @property
    def jobs_per_second(self) -> float:
        return ratio(self.succeeded, self.seconds)


@dataclass(frozen=True)
class Ceiling:
    drain: Drain
    end_to_end: EndToEnd


@dataclass(frozen=True)
class SimulatedDevice:
    """A backlog of default jobs through the gateway and one worker on the H200 curve."""

    curve: dict[int, float]
    jobs: int
    sampler: str
    steps: int
    guidance_scale: float
    rows_per_job: int
    max_batch_rows: int
    seconds: float  # first submit to last finished_at
    submit_seconds: float  # first submit to the last one's answer: the rate jobs arrived at
    failed: int
    engine: EngineShare | None
    drain: Drain | None  # the same worker draining a prefilled queue alone

    @property
    def submitted_per_second(self) -> float:
        return ratio(self.jobs, self.submit_seconds)

    @property
    def rows_per_second(self) -> float:
        return ratio((self.jobs - self.failed) * self.steps * self.rows_per_job, self.seconds)

    @property
    def image_steps_per_second(self) -> float:
        return ratio((self.jobs - self.failed) * self.steps, self.seconds)

    @property
    def best_rows_per_second(self) -> float:
        return max(self.curve.values())

    @property
    def efficiency(self) -> float:
        return ratio(self.rows_per_second, self.best_rows_per_second)


@dataclass(frozen=True)
class PipelineDrain(DrainedJobs):
    """Figure 9: one worker on free stages draining jobs of a text-to-image pipeline (its
    rows per call sized from its own, free, curve)."""

    model: str
    stage_seconds: dict[str, float]  # the free stages' calls, from the worker's metrics


# ---- pure parts -------------------------------------------------------------------------
def ping_per_job(ping_per_second: float, jobs_per_second: float) -> float:
    """PING round trips that fit in one job's share of the drain."""
    return ratio(ping_per_second, jobs_per_second)


def command_calls(commandstats: Mapping[str, Any]) -> dict[str, int]:
    """``{command: calls}`` from redis-py's ``info("commandstats")`` (``cmdstat_get: {calls: 3,
    ...}``); subcommands (``cmdstat_client|setinfo``) kept apart."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in commandstats.items()
        if name.startswith("cmdstat_")
    }


def calls_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Calls made between two ``command_calls`` readings, INFO left out, none-zero only."""
    delta = {name: n - before.get(name, 0) for name, n in after.items() if name not in NOT_COUNTED}
    return {name: n for name, n in delta.items() if n}


def script_calls(calls: Mapping[str, int]) -> int:
    return sum(n for name, n in calls.items() if name in SCRIPT_COMMANDS)


def jobs_finished(exposition: str) -> dict[str, int]:
    """``{status: jobs}`` from a worker's ``/metrics`` text (``diffq_jobs_finished_total``)."""
    out: dict[str, int] = {}
    for labels, value in re.findall(rf"^{FINISHED}{{([^}}]*)}} (\S+)$", exposition, re.MULTILINE):
        status = re.search(r'status="([^"]*)"', labels)
        if status:
            out[status.group(1)] = out.get(status.group(1), 0) + int(float(value))
    return out


def stage_seconds(exposition: str) -> dict[str, float]:
    """Seconds in each pipeline stage's calls (``diffq_stage_duration_seconds_sum`` by stage),
    from a worker's exposition."""
    out: dict[str, float] = {}
    for m in re.finditer(r"^diffq_stage_duration_seconds_sum\{([^}]*)\} (\S+)$", exposition, re.MULTILINE):
        if stage := re.search(r'stage="([^"]*)"', m.group(1)):
            out[stage.group(1)] = out.get(stage.group(1), 0.0) + float(m.group(2))
    return out


def span(jobs: Sequence[Job | None]) -> tuple[float, int]:
    """(first ``started_at`` to last ``finished_at`` of the jobs that succeeded, how many did not)."""
    ok = [j for j in jobs if j is not None and j.status == Status.SUCCEEDED]
    if not ok:
        return float("nan"), len(jobs)
    started = min(j.started_at or j.created_at for j in ok)
    finished = max(j.finished_at or 0.0 for j in ok)
    return finished - started, len(jobs) - len(ok)


# ---- measurements -----------------------------------------------------------------------
def measure_ceiling(
    stack: BenchStack, jobs: int, clients: int, seconds: float, ping_seconds: float = 1.0
) -> Ceiling:
    """Figure 7 (see the module's docstring); leaves the zero-cost worker running."""
    client = redis.Redis.from_url(stack.redis_url)
    api = Api(stack.base_url)
    try:
        startup = startup_cost(stack, client)
        # Rows per call 0: the worker measures its (simulated) engine's curve and sizes its
        # batches from it, as it would on real hardware.
        drain = measure_drain(stack, client, api, "zero", ZERO_JOB, jobs, 0, startup, ping_seconds)
        sampler, steps, guidance = ZERO_JOB
        end_to_end = measure_end_to_end(api, clients, seconds, Request(sampler, steps, 3, guidance, 1))
    finally:
        api.close()
        client.close()
    return Ceiling(drain, end_to_end)


@dataclass(frozen=True)
class Startup:
    """What a simulated worker sends from its start until it is ready and has found the queue
    empty: counted once, then left out of the drains' figures."""

    commands: int
    scripts: int
    sent: tuple[int, int] | None  # the worker's (requests, commands)


def startup_cost(stack: BenchStack, client: Any) -> Startup:
    trips = stack.dir / "round_trips_startup"
    before = command_calls(client.info("commandstats"))
    stack.start_simulated_worker("zero", BENCH_ROUND_TRIPS_FILE=str(trips))
    stack.wait_worker_ready()
    time.sleep(3 * ROUND_TRIPS_EVERY)
    calls = calls_between(before, command_calls(client.info("commandstats")))
    stack.stop_worker()
    return Startup(sum(calls.values()), script_calls(calls), _read_counts(trips))


def measure_drain(
    stack: BenchStack,
    client: Any,
    api: Api,
    device: str,
    job: tuple[str, int, float],
    jobs: int,
    max_batch_rows: int,
    startup: Startup,
    ping_seconds: float = 1.0,
) -> Drain:
    """``jobs`` one-image ``job`` (sampler, steps, guidance) jobs submitted over HTTP with no
    worker running, then drained by one worker on the simulated ``device`` (at most
    ``max_batch_rows`` rows per call; 0: the worker's own sizes from its curve); the worker is left
    running, idle. ``ping_seconds``: PINGs timed for that long (half before the drain, half
    after), and the idle stack's own commands counted for that long before it."""
    sampler, steps, guidance = job
    stack.stop_worker()
    work = uniform_jobs(jobs, sampler, steps, guidance, seed=2000)
    ids = api.submit_all(work)
    pings = ping_rates(client, ping_seconds / 2)  # before the drain, and after it (below)
    began = time.monotonic()
    before = command_calls(client.info("commandstats"))
    time.sleep(ping_seconds)  # what the idle stack sends meanwhile (the gateway's own calls)
    idle = calls_between(before, command_calls(client.info("commandstats")))
    idle_rate = sum(idle.values()) / (time.monotonic() - began)

    trips = stack.dir / f"round_trips_{device}"
    trips.unlink(missing_ok=True)
    before = command_calls(client.info("commandstats"))
    began = time.monotonic()
    stack.start_simulated_worker(
        device, BENCH_ROUND_TRIPS_FILE=str(trips), DIFFQ_MAX_BATCH_ROWS=str(max_batch_rows)
    )
    _wait_finished(stack, jobs)
    calls = calls_between(before, command_calls(client.info("commandstats")))
    window = time.monotonic() - began
    time.sleep(3 * ROUND_TRIPS_EVERY)
    sent, metrics = _read_counts(trips), stack.worker_metrics()
    seconds, failed = span(_records(stack, ids))
    background = round(idle_rate * window)
    round_trips = worker_commands = None
    if sent is not None and startup.sent is not None:
        round_trips, worker_commands = sent[0] - startup.sent[0], sent[1] - startup.sent[1]
    return Drain(
        device=device,
        jobs=jobs,
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance,
        rows_per_job=work[0].rows_per_step,
        max_batch_rows=int(metrics.get("diffq_worker_backlog_rows") or max_batch_rows),
        seconds=seconds,
        failed=failed,
        commands=sum(calls.values()) - background - startup.commands,
        script_calls=script_calls(calls) - startup.scripts,
        round_trips=round_trips,
        worker_commands=worker_commands,
        background_commands=background,
        startup_commands=startup.commands,
        top_commands=tuple(sorted(calls.items(), key=lambda kv: -kv[1])[:8]),
        ping_per_second=median(pings := pings + ping_rates(client, ping_seconds / 2)),
        ping_range=(min(pings), max(pings)),
        engine=_engine(metrics),
    )


def measure_end_to_end(api: Api, clients: int, seconds: float, job: Request) -> EndToEnd:
    """``clients`` threads each submitting ``job`` and waiting for it (``Api.run``), for
    ``seconds`` after a short warm-up; jobs answered in the window are counted."""
    begin = time.monotonic() + 0.5
    end = begin + seconds
    counts = [[0, 0] for _ in range(clients)]

    def loop(count: list[int]) -> None:
        while (now := time.monotonic()) < end:
            view = api.run(job)
            if now >= begin and time.monotonic() <= end:
                count[0 if view["status"] == "succeeded" else 1] += 1

    threads = [threading.Thread(target=loop, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return EndToEnd(clients, seconds, sum(c[0] for c in counts), sum(c[1] for c in counts))


def measure_simulated(
    stack: BenchStack, jobs: int, drain_jobs: int, submit_threads: int = 4, ping_seconds: float = 1.0
) -> SimulatedDevice:
    """Figure 8 (see the module's docstring): the worker's tick from the curve by the worker's
    own rule; the backlog submitted as fast as ``submit_threads`` connections go while the
    worker runs, then (``drain_jobs`` > 0) a prefilled queue drained by the worker alone."""
    sampler, steps, guidance = DEFAULT_JOB
    rows = tick_rows(H200_CURVE)
    stack.start_simulated_worker("h200", DIFFQ_MAX_BATCH_ROWS=str(rows))
    stack.wait_worker_ready()
    work = uniform_jobs(jobs, sampler, steps, guidance, seed=3000)
    client = redis.Redis.from_url(stack.redis_url)
    api = Api(stack.base_url)
    try:
        before = stack.worker_metrics()
        first_submit = time.time()
        ids = api.submit_all(work, threads=submit_threads)
        submit_seconds = time.time() - first_submit
        _wait_finished(stack, jobs)
        after = stack.worker_metrics()
        records = _records(stack, ids)
        drain = None
        if drain_jobs:
            startup = startup_cost(stack, client)
            drain = measure_drain(
                stack, client, api, "h200", DEFAULT_JOB, drain_jobs, rows, startup, ping_seconds
            )
    finally:
        api.close()
        client.close()
    ok = [j for j in records if j is not None and j.status == Status.SUCCEEDED]
    last = max((j.finished_at or 0.0 for j in ok), default=float("nan"))
    return SimulatedDevice(
        curve=dict(H200_CURVE),
        jobs=jobs,
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance,
        rows_per_job=work[0].rows_per_step,
        max_batch_rows=rows,
        seconds=last - first_submit,
        submit_seconds=submit_seconds,
        failed=jobs - len(ok),
        engine=_engine(after, before),
        drain=drain,
    )


def measure_pipeline_ceiling(
    threads: int, gateway_processes: int, store: Path, model: str, jobs: int
) -> PipelineDrain:
    """Figure 9 on a fresh stack serving the model store ``store`` (which holds ``model``)."""
    stack = BenchStack(threads, None, gateway_processes, model_store=store)
    try:
        stack.start_gateway()
        return measure_pipeline_drain(stack, model, jobs)
    finally:
        stack.close()


def measure_pipeline_drain(stack: BenchStack, model: str, jobs: int) -> PipelineDrain:
    """Figure 9 (see the module's docstring): ``stack`` serves only ``model``; its jobs, of
    figure 7's shape with a prompt each, are submitted with no worker running, then drained
    by one worker on the free device sizing its batches from its own curve."""
    sampler, steps, guidance = ZERO_JOB
    stack.stop_worker()
    work = unique_prompt_jobs(jobs, sampler, steps, guidance, seed=4000)
    api = Api(stack.base_url)
    try:
        ids = api.submit_all(work)
    finally:
        api.close()
    stack.start_simulated_worker("zero", DIFFQ_MAX_BATCH_ROWS="0")
    _wait_finished(stack, jobs)
    exposition = stack.worker_exposition()
    metrics = stack.worker_metrics(exposition)
    seconds, failed = span(_records(stack, ids))
    return PipelineDrain(
        model=model,
        jobs=jobs,
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance,
        rows_per_job=work[0].rows_per_step,
        max_batch_rows=int(metrics.get("diffq_worker_backlog_rows") or 0),
        seconds=seconds,
        failed=failed,
        engine=_engine(metrics),
        stage_seconds=stage_seconds(exposition),
    )


def ping_rates(client: Any, seconds: float, windows: int = 5) -> list[float]:
    """Sequential PING round trips per second from one redis-py client, in ``windows`` windows
    of ``seconds / windows`` (the rate moves with what else the two cores run)."""
    return [ping_rate(client, seconds / windows) for _ in range(windows)]


def ping_rate(client: Any, seconds: float) -> float:
    """Sequential PING round trips per second from one redis-py client."""
    client.ping()
    n, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds or n == 0:
        client.ping()
        n += 1
    return n / elapsed


def _wait_finished(stack: BenchStack, jobs: int, timeout: float = 600) -> None:
    """Until the worker's metrics count ``jobs`` finished jobs (read over HTTP from the worker:
    no Valkey command)."""
    deadline = time.monotonic() + timeout
    url = f"{stack.stack.worker_urls[WORKER]}/metrics"
    while time.monotonic() < deadline:
        try:
            if sum(jobs_finished(httpx.get(url, timeout=5).text).values()) >= jobs:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        if stack.stack.procs[WORKER].poll() is not None:
            raise RuntimeError(f"the worker exited: {stack.stack.read_log(WORKER)}")
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{jobs} jobs not finished after {timeout}s: {stack.stack.read_log(WORKER)}")


def _records(stack: BenchStack, ids: Sequence[str]) -> list[Job | None]:
    store = RedisStore(stack.redis_url, stack.stack.env["DIFFQ_KEY_PREFIX"])
    try:
        out: list[Job | None] = []
        for i in range(0, len(ids), 500):
            out += store.get_many(ids[i : i + 500])
        return out
    finally:
        store.close()


def _read_counts(path: Path) -> tuple[int, int] | None:
    """``bench.simulated_worker``'s (requests, commands), if it wrote them."""
    try:
        requests, commands = path.read_text().split()
        return int(requests), int(commands)
    except (OSError, ValueError):
        return None


def _engine(after: Mapping[str, float], before: Mapping[str, float] | None = None) -> EngineShare | None:
    keys = (
        "diffq_denoiser_call_duration_seconds_sum",
        "diffq_denoiser_call_duration_seconds_count",
        "diffq_batch_rows_sum",
    )
    if not all(k in after for k in keys):
        return None
    b = before or {}
    seconds, calls, rows = (after[k] - b.get(k, 0.0) for k in keys)
    return EngineShare(seconds, int(calls), int(rows))
