"""Host work overlapped with the engine: with ``overlap_host_work`` a worker stores the jobs a
step finished (PNGs, results, acks) while the next denoiser call runs; without it, one after
the other. Either way the images are the same bytes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from diffq.jobs import Job, JobRequest, Status, new_job_id
from diffq.store import RedisStore
from model_store.store import ModelStore
from tests.conftest import worker_settings
from workers.main import build_worker

MODEL = ModelStore().get("mnist-cfg-unet").manifest.name
CALL_SECONDS = 0.02  # added to each call, so a store that starts during one surely meets it


def jobs() -> list[Job]:
    """A long job stepping throughout, and short ones finishing while it does."""
    long = JobRequest(MODEL, 1, 1, 60, "ddim", 1.0, 1)
    short = [JobRequest(MODEL, d, 1, 4, "dpmpp_2m", 2.0, 10 + d) for d in range(6)]
    return [Job(new_job_id(), r, Status.QUEUED, time.time()) for r in (long, *short)]


def intervals_overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


@pytest.mark.parametrize("overlap", [True, False])
def test_finished_jobs_are_stored_while_the_next_call_runs(valkey: str, prefix: str, overlap: bool) -> None:
    store = RedisStore(valkey, prefix=prefix)
    worker = build_worker(worker_settings(valkey, prefix, max_batch_rows=16, overlap_host_work=overlap))
    calls: list[tuple[float, float]] = []
    stores: list[tuple[float, float]] = []
    run, store_results = worker.engine.run, worker.store.store_results

    def timed_run(x: np.ndarray, t: np.ndarray, c: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        time.sleep(CALL_SECONDS)
        out = run(x, t, c)
        calls.append((began, time.perf_counter()))
        return out

    def timed_store(results):  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        out = store_results(results)
        stores.append((began, time.perf_counter()))
        return out

    worker.engine.run = timed_run  # type: ignore[method-assign]
    worker.store.store_results = timed_store  # type: ignore[method-assign]
    submitted = jobs()
    for job in submitted:
        store.submit(job)
    worker.run(burst=True)

    final = store.get_many([j.id for j in submitted])
    assert all(f is not None and f.status == Status.SUCCEEDED for f in final)
    assert stores and calls
    assert intervals_overlap(stores, calls) == overlap
    images = [store.get_image(j.id, 0) for j in submitted]
    assert all(images)
    # The same bytes as the model gives these requests one after the other, whatever overlapped.
    other = f"{prefix}-serial"
    serial = RedisStore(valkey, prefix=other)
    again = [Job(new_job_id(), j.request, Status.QUEUED, time.time()) for j in submitted]
    for job in again:
        serial.submit(job)
    build_worker(worker_settings(valkey, other, max_batch_rows=1, overlap_host_work=False)).run(burst=True)
    assert [serial.get_image(j.id, 0) for j in again] == images
