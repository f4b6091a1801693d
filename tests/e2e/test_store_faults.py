"""Storage faults with real processes on a dedicated Valkey: a full store (``maxmemory`` with
``noeviction``), a store that stops answering (SIGSTOP), and one restarted under the gateway.
Each is a 503 ``unavailable`` with Retry-After, never a 500; workers back off keeping their
jobs; nothing needs restarting by hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from diffq.serve import free_port, start_valkey, wait_for_http
from tests.conftest import Stack, stack_env, wait_for
from tests.e2e.test_events_e2e import Reader, stream
from tests.e2e.test_faults import eventually, record, records, submit

STEPS = {"steps": 4}


@dataclass
class Valkey:
    """A Valkey of the test's own, to fill, pause and restart."""

    data: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def restart(self) -> None:
        """SIGKILL, then the same port and data: the AOF brings every accepted job back."""
        self.proc.kill()
        self.proc.wait(10)
        self.proc = start_valkey(self.data, self.port)

    def stop(self) -> None:
        with_signal(self.proc, signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(10)


def with_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    port, data = free_port(), tmp_path / "valkey"
    v = Valkey(data, port, start_valkey(data, port))
    yield v
    v.stop()


@pytest.fixture
def stack(valkey: Valkey, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(env=stack_env(valkey.url, prefix), logs=tmp_path)
    yield s
    s.stop_all()


def fill(r: redis.Redis, filler: int = 4 << 20) -> None:
    """Make the store full: ``filler`` bytes of other data, then ``maxmemory`` (no eviction)
    half of that below what it holds, so every write that could grow memory is refused."""
    r.config_set("maxmemory-policy", "noeviction")
    for i in range(filler // (64 << 10)):
        r.set(f"filler:{i}", b"x" * (64 << 10))
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory", str(used - filler // 2))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.set("one-more", b"x")


def assert_unavailable(r: httpx.Response, reason: str) -> dict:
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    error = dict(r.json()["error"])
    assert error["type"] == "unavailable" and error["details"]["reason"] == reason, error
    return error


def test_a_full_store_refuses_submissions_with_503_and_workers_keep_their_jobs(
    valkey: Valkey, stack: Stack
) -> None:
    stack.start_gateway()
    stack.start_worker("worker-a")
    stack.wait_ready()
    store, r = records(stack), valkey.client()
    body = {"class_label": 3, "steps": 400, "sampler": "ddpm", "seed": 21}
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job_id = submit(client, body)
        eventually(lambda: record(store, job_id).step > 0, 30, "the job running")
        fill(r)

        refused = [client.post("/v1/jobs", json={"class_label": d, **STEPS}) for d in range(3)]
        for resp in refused:
            error = assert_unavailable(resp, "full")
            assert "full" in error["message"] and "Location" not in resp.headers  # nothing was written
        assert int(refused[0].headers["Retry-After"]) >= 5
        # Reads go on: the running job, and the gateway stays ready (Valkey answers).
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
        assert client.get("/readyz").status_code == 200
        # The worker cannot write its progress: it backs off, holding the job, and does not exit.
        time.sleep(1.5)
        stuck = record(store, job_id)
        assert stuck.status.value == "running" and stuck.attempts == 1
        assert stack.procs["worker-a"].poll() is None, stack.read_log("worker-a")

        r.config_set("maxmemory", "0")  # room again
        done = wait_for(client, job_id, {"succeeded", "failed"}, timeout=60)
        after = wait_for(client, submit(client, {"class_label": 8, **STEPS}), {"succeeded"}, timeout=30)
    assert done["status"] == "succeeded", done
    assert record(store, job_id).attempts == 1, "kept through the refusal, not redone"
    assert after["status"] == "succeeded"
    log = stack.read_log("worker-a")
    refusals = [json.loads(line) for line in log.splitlines() if "redis refused a command" in line]
    assert refusals and all(x["error"] == "OutOfMemoryError" and x["reason"] == "full" for x in refusals)
    assert "maxmemory" in refusals[0]["detail"]
    assert "redis reachable again" in log and "Traceback" not in log
    assert "Traceback" not in stack.read_log("gateway")


def test_a_submission_the_store_did_not_answer_names_its_job(valkey: Valkey, stack: Stack) -> None:
    stack.env["DIFFQ_REDIS_TIMEOUT_SECONDS"] = "0.3"
    stack.start_gateway()
    stack.wait_ready()
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        submit(client, {"class_label": 1, **STEPS})  # the gateway's connection is open
        key = {"Idempotency-Key": "paused-store-1"}
        with_signal(valkey.proc, signal.SIGSTOP)
        try:
            started = time.monotonic()
            resp = client.post("/v1/jobs", json={"class_label": 2, **STEPS}, headers=key)
            took = time.monotonic() - started
        finally:
            with_signal(valkey.proc, signal.SIGCONT)
        error = assert_unavailable(resp, "timeout")
        job_id = error["details"]["job_id"]
        assert took < 2, took
        assert resp.headers["Location"] == f"/v1/jobs/{job_id}" and job_id in error["message"]
        # The script reached Valkey before the gateway gave up: it ran once Valkey went on, so
        # the job exists under the id the 503 named, and a retry with the key returns it.
        looked = client.get(resp.headers["Location"])
        assert looked.status_code == 200 and looked.json()["id"] == job_id, looked.text
        again = client.post("/v1/jobs", json={"class_label": 2, **STEPS}, headers=key)
        assert again.status_code == 202 and again.json()["id"] == job_id
        assert again.headers["Idempotent-Replayed"] == "true"
        # One the store never saw is a plain 404 there.
        assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404


def test_waiting_requests_survive_a_store_restart(valkey: Valkey, stack: Stack) -> None:
    stack.start_gateway()
    stack.wait_ready()
    wait = {"Prefer": "wait=0.5"}
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job_id = submit(client, {"class_label": 5, **STEPS})  # no worker: it stays queued

        def waits(n: int) -> list[httpx.Response]:
            """n concurrent ``Prefer: wait`` reads: each holds a connection of the gateway's pool."""
            out: list[httpx.Response] = []
            threads = [
                threading.Thread(
                    target=lambda: out.append(httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", headers=wait))
                )
                for _ in range(n)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            return out

        assert [x.status_code for x in waits(4)] == [200] * 4
        across: list[httpx.Response] = []  # a wait the restart happens in the middle of
        long_wait = threading.Thread(
            target=lambda: across.append(
                httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", headers={"Prefer": "wait=3"})
            )
        )
        long_wait.start()
        time.sleep(0.5)
        valkey.restart()
        assert wait_for_http(f"{stack.base_url}/readyz", timeout=20)
        # The first waits after the restart meet the pool's connections to the old server.
        after = waits(4)
        assert [x.status_code for x in after] == [200] * 4, [x.text for x in after]
        assert all(
            x.json()["status"] == "queued" and x.headers["Preference-Applied"] == "wait=0.5" for x in after
        )
        submitted = client.post("/v1/jobs", json={"class_label": 6, **STEPS}, headers=wait)
        assert submitted.status_code == 202, submitted.text
        long_wait.join(10)
        assert [x.status_code for x in across] == [200], [x.text for x in across]
        assert across[0].json()["status"] == "queued"
    assert "Traceback" not in stack.read_log("gateway")


def test_an_event_stream_survives_a_store_restart(valkey: Valkey, stack: Stack) -> None:
    """Open on a queued job across a Valkey restart: heartbeats go on, the gateway's
    subscription is made again, and the job's start, steps and end reach the stream."""
    stack.start_gateway()
    stack.wait_ready()
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        job_id = submit(client, {"class_label": 5, "steps": 6})  # no worker yet: it stays queued
        reader = Reader(stream(client, job_id))
        assert reader.first.wait(30)
        valkey.restart()
        assert wait_for_http(f"{stack.base_url}/readyz", timeout=20)
        time.sleep(1.5)  # the subscription is made again (its back-off starts at 0.1 s)
        stack.start_worker("worker-a", DIFFQ_PROGRESS_INTERVAL_MS="60000")
        reader.join()
    assert [j["status"] for j in reader.jobs()] == ["queued", "running", "succeeded"]
    assert reader.steps() == [1, 2, 3, 4, 5, 6] and reader.ended
    assert "Traceback" not in stack.read_log("gateway")
