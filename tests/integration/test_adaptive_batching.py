"""Adaptive batching with a real Valkey, worker and model: while jobs wait in the queue the
worker's calls grow past its light-load tick to its backlog size, and once the queue is empty
they shrink back; a worker without a backlog size keeps to its tick."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from diffq.jobs import Job, JobRequest, Status, new_job_id
from diffq.store import RedisStore
from model_store.store import ModelStore
from tests.conftest import worker_settings
from workers.main import build_worker
from workers.worker import Worker

MODEL = ModelStore().get("mnist-cfg-unet").manifest.name
TICK, BACKLOG = 2, 8


def job(seed: int, steps: int = 4, guidance: float = 1.0, sampler: str = "ddim") -> Job:
    """One image; unguided it is one row per step, guided two."""
    request = JobRequest(MODEL, seed % 10, 1, steps, sampler, guidance, seed)
    return Job(new_job_id(), request, Status.QUEUED, time.time())


def recording(worker: Worker, times: list[float] | None = None) -> list[int]:
    """The rows of every denoiser call the worker makes from now on (and into ``times``, when
    given, the wall time each began)."""
    calls: list[int] = []
    run = worker.engine.run

    def counted(x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        if times is not None:
            times.append(time.time())
        calls.append(len(t))
        return run(x, t, c)

    worker.engine.run = counted  # type: ignore[method-assign]
    return calls


def switches(worker: Worker, mode: str) -> float:
    value = worker._metrics.registry.get_sample_value(
        "diffq_worker_batch_mode_switches_total", {"model": MODEL, "mode": mode}
    )
    assert value is not None
    return value


def budget(worker: Worker) -> float | None:
    return worker._metrics.registry.get_sample_value("diffq_worker_row_budget", {"model": MODEL})


@pytest.mark.parametrize("backlog_rows", [BACKLOG, 0])
def test_a_backlog_grows_the_calls_and_an_empty_queue_shrinks_them(
    valkey: str, prefix: str, backlog_rows: int
) -> None:
    store = RedisStore(valkey, prefix=prefix)
    worker = build_worker(
        worker_settings(valkey, prefix, max_batch_rows=TICK, backlog_batch_rows=backlog_rows)
    )
    calls = recording(worker)
    jobs = [job(seed) for seed in range(24)]
    for j in jobs:
        store.submit(j)
    worker.run(burst=True)

    final = store.get_many([j.id for j in jobs])
    assert all(f is not None and f.status == Status.SUCCEEDED for f in final)
    if backlog_rows:
        assert max(calls) == BACKLOG  # the queue held 24 rows: the batch grew to the backlog size
        assert switches(worker, "backlog") >= 1 and switches(worker, "light") >= 1
        assert budget(worker) == TICK  # the queue ran dry: back to the light-load tick
    else:
        assert max(calls) == TICK
        assert switches(worker, "backlog") == switches(worker, "light") == 0
    assert sum(calls) == 24 * 4  # every job's every step, once


@pytest.mark.parametrize("backlog_rows", [BACKLOG, 0])
def test_a_full_batch_at_the_tick_notices_jobs_queued_behind_it(
    valkey: str, prefix: str, backlog_rows: int
) -> None:
    """The running set fills the tick, so the worker does not claim; submissions arriving then
    are seen by the look at the queue, and join the batch instead of waiting for it to end."""
    store = RedisStore(valkey, prefix=prefix)
    worker = build_worker(
        worker_settings(valkey, prefix, max_batch_rows=TICK, backlog_batch_rows=backlog_rows)
    )
    times: list[float] = []
    calls = recording(worker, times)
    long = job(100, steps=400, guidance=3.0, sampler="ddpm")  # two rows: the whole tick
    store.submit(long)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (worker.run(burst=True), done.set()), daemon=True)
    thread.start()
    wait_until(lambda: len(calls) >= 5)  # the long job is stepping alone
    short = [job(seed) for seed in range(4)]
    for j in short:
        store.submit(j)
    thread.join(timeout=120)
    assert done.is_set()

    records = store.get_many([long.id, *(j.id for j in short)])
    assert all(r is not None and r.status == Status.SUCCEEDED for r in records)
    starts = [r.started_at or 0.0 for r in records[1:]]  # type: ignore[union-attr]
    if backlog_rows:
        assert max(calls) > TICK
        assert max(starts) < times[399 - 4]  # all four joined while the long job still stepped
    else:  # the tick stays full until the long job's last step: the short ones wait for it
        assert max(calls) == TICK and calls[:400] == [2] * 400
        assert min(starts) > times[399]


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
