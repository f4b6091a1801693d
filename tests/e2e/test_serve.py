"""`diffq serve` (what `make run` runs): embedded Valkey, gateway and WORKERS workers, each a
process an operator can find by name; SIGINT stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from diffq.serve import free_port, wait_for_http
from tests.conftest import ROOT, wait_for


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
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_") and k != "REDIS_URL"}
    worker_port = free_port()  # worker-N listens on worker_port + N
    env.update(
        PORT=str(port),
        WORKERS="2",
        DIFFQ_VAR_DIR=str(tmp_path / "var"),
        DIFFQ_WORKER_PORT=str(worker_port),
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
        assert sum("diffq worker --name worker-" in c for c in commands) == 2, commands
        assert sum("diffq gateway" in c for c in commands) == 1, commands
        assert any("valkey-server" in c for c in commands), commands
        assert (tmp_path / "var" / "valkey").is_dir()

        with httpx.Client(base_url=base, timeout=10) as client:
            job = client.post("/v1/jobs", json={"class_label": 7, "num_images": 2, "seed": 42}).json()
            done = wait_for(client, job["id"], {"succeeded", "failed"})
            assert done["status"] == "succeeded"
            assert client.get(done["images"][0]["url"]).headers["content-type"] == "image/png"
            assert "diffq_jobs_submitted_total" in client.get("/metrics").text
        for n in range(2):  # each worker serves its own probes and metrics
            url = f"http://127.0.0.1:{worker_port + n}"
            assert wait_for_http(f"{url}/readyz", timeout=60), f"worker-{n} not ready"
            assert "diffq_denoiser_call_duration_seconds" in httpx.get(f"{url}/metrics", timeout=5).text

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
