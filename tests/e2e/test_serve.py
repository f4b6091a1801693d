"""`diffq serve` (what `make run` runs): embedded Valkey, one gateway for every model in the
store and WORKERS workers per model (or the model's DIFFQ_WORKERS_PER_MODEL count), each a
process an operator can find by name; SIGINT stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from diffq.serve import free_port, wait_for_http
from tests.conftest import ROOT, free_port_range, wait_for
from tests.stores import MNIST, TEXT_MODEL, add_class_model_copy, text_model_store

SECOND = "mnist-copy"  # a second real class model (MNIST's files under another name)


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdlines[int(entry.name)] = cmd
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p:
                out.append((child, cmdlines[child]))
                frontier.append(child)
    return out


def test_serve_runs_the_stack_and_stops_on_sigint(tmp_path: Path) -> None:
    # Three models: MNIST with 2 workers (its override), the copy with WORKERS = 1, and the
    # dummy text model (its files cannot be loaded) with none: the gateway still serves it.
    store = text_model_store(tmp_path / "store")
    add_class_model_copy(store, SECOND)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_") and k != "REDIS_URL"}
    worker_port = free_port_range(4)  # worker-N listens on worker_port + N
    webhook_port = free_port()
    env.update(
        PORT=str(port),
        WORKERS="1",
        DIFFQ_WORKERS_PER_MODEL=f"{MNIST}=2,{TEXT_MODEL}=0",
        DIFFQ_MODEL_STORE=str(store),
        DIFFQ_VAR_DIR=str(tmp_path / "var"),
        DIFFQ_WORKER_PORT=str(worker_port),
        DIFFQ_WEBHOOK_PORT=str(webhook_port),
        DIFFQ_MAX_BATCH_ROWS="64",  # fixed, not measured at start: three workers share the cores
        DIFFQ_INTRA_OP_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffq", "serve"], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{base}/readyz", timeout=90):
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])

        commands = [cmd for _, cmd in children_of(proc.pid)]
        workers = [c for c in commands if "diffq worker --name worker-" in c]
        assert len(workers) == 3, commands
        assert sum(c.endswith(f"--model {MNIST}") for c in workers) == 2, workers
        assert sum(c.endswith(f"--model {SECOND}") for c in workers) == 1, workers
        assert sum("diffq gateway" in c for c in commands) == 1, commands
        assert sum("diffq webhooks run" in c for c in commands) == 1, commands
        assert any("valkey-server" in c for c in commands), commands
        assert (tmp_path / "var" / "valkey").is_dir()

        with httpx.Client(base_url=base, timeout=10) as client:
            served = {m["name"] for m in client.get("/v1/models").json()["models"]}
            assert served == {MNIST, SECOND, TEXT_MODEL}
            for model in (MNIST, SECOND):  # one gateway routes to every model's workers
                body = {"model": model, "class_label": 7, "num_images": 2, "seed": 42}
                job = client.post("/v1/jobs", json=body).json()
                done = wait_for(client, job["id"], {"succeeded", "failed"})
                assert done["status"] == "succeeded", done
                assert client.get(done["images"][0]["url"]).headers["content-type"] == "image/png"
            assert "diffq_jobs_submitted_total" in client.get("/metrics").text
        for n in range(3):  # each worker serves its own probes and metrics
            url = f"http://127.0.0.1:{worker_port + n}"
            assert wait_for_http(f"{url}/readyz", timeout=60), f"worker-{n} not ready"
            assert "diffq_denoiser_call_duration_seconds" in httpx.get(f"{url}/metrics", timeout=5).text
        hooks = f"http://127.0.0.1:{webhook_port}"  # the webhook deliverer, its own port
        assert wait_for_http(f"{hooks}/readyz", timeout=60), "the webhook deliverer is not ready"
        assert "diffq_webhook_attempts_total" in httpx.get(f"{hooks}/metrics", timeout=5).text
        live = httpx.get(f"{base}/readyz", timeout=10).json()["workers"]
        assert live == {MNIST: 2, SECOND: 1, TEXT_MODEL: 0}

        pids = [pid for pid, _ in children_of(proc.pid)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if proc.poll() is None:  # the test failed midway: children run in their own sessions
            for pid, _ in children_of(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
