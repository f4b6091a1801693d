"""`diffq serve` supervises what it starts (real processes on loopback): a killed Valkey is
reaped and restarted on the same data, its children die with it even on SIGKILL, a second
serve on the same data directory is refused, a worker whose probe port is taken says so
in one line while serve backs off and does not claim ready, a Valkey that fails at start-up is
retried (the gateway and workers start once it listens) rather than ending serve, and a
child refusing its settings stops serve with status 2."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from diffq.serve import free_port, lock_data_dir
from tests.conftest import ROOT, free_port_range, wait_for
from tests.e2e.test_serve import children_of
from tests.stores import MNIST

WORKER_PORTS = 4  # worker-N of serve binds DIFFQ_WORKER_PORT + N (one worker per model here)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for whoever adopted it to reap it."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def wait_until(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    raise AssertionError(f"not within {timeout}s: {what}\n{tail}")


def retry_503(call: Callable[[], httpx.Response], timeout: float = 10) -> httpx.Response:
    """``call()`` until it answers something other than 503 (what clients do after an outage)."""
    deadline = time.monotonic() + timeout
    while (response := call()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    return response


class Serve:
    """One `diffq serve` process, its output in ``log``; ``close`` kills whatever is left."""

    def __init__(self, tmp: Path, name: str, **extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_") and k != "REDIS_URL"}
        self.port = free_port()
        env.update(
            PORT=str(self.port),
            WORKERS="1",
            DIFFQ_MODEL_STORE=str(ROOT / "model_store"),
            DIFFQ_VAR_DIR=str(tmp / "var"),
            DIFFQ_WORKER_PORT=str(free_port_range(WORKER_PORTS)),
            DIFFQ_WEBHOOK_PORT=str(free_port()),
            DIFFQ_MAX_BATCH_ROWS="64",  # fixed, not measured at start
            DIFFQ_INTRA_OP_THREADS="1",
            DIFFQ_GRACE_SECONDS="10",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        self.env = env
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "diffq", "serve"], env=env, cwd=ROOT, stdout=out, stderr=out
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float, count: int = 1) -> list[str]:
        found: list[str] = []

        def seen() -> bool:
            found[:] = re.findall(pattern, self.text(), re.MULTILINE)
            return len(found) >= count

        wait_until(f"{count} x {pattern!r}", seen, timeout, self.log)
        return found

    def close(self) -> None:
        kids = [pid for pid, _ in children_of(self.proc.pid)] if self.proc.poll() is None else []
        if self.proc.poll() is None:  # first, so it restarts nothing
            self.proc.kill()
        self.proc.wait(10)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        s.close()


def test_valkey_restarts_a_second_serve_is_refused_and_children_die_with_serve(
    tmp_path: Path, serves: list[Serve]
) -> None:
    serve = Serve(tmp_path, "serve", DIFFQ_RESTART_BACKOFF_SECONDS="0.2")
    serves.append(serve)
    serve.wait_for_line(r"^diffq ready on ", timeout=60)
    body = {"model": MNIST, "class_label": 3, "num_images": 1, "seed": 7, "steps": 4}
    with httpx.Client(base_url=serve.base, timeout=10) as client:
        before = client.post("/v1/jobs", json=body).json()
        assert wait_for(client, before["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"

        valkeys = [pid for pid, cmd in children_of(serve.proc.pid) if "valkey-server" in cmd]
        assert len(valkeys) == 1
        os.kill(valkeys[0], signal.SIGKILL)
        serve.wait_for_line(r"^embedded Valkey was killed by SIGKILL; restarting in 0\.2s$", timeout=10)
        serve.wait_for_line(r"^diffq not ready: embedded Valkey was killed by SIGKILL", timeout=10)
        serve.wait_for_line(r"^diffq ready again on ", timeout=30)
        assert not Path(f"/proc/{valkeys[0]}").exists()  # reaped, not left a zombie
        now = [pid for pid, cmd in children_of(serve.proc.pid) if "valkey-server" in cmd]
        assert len(now) == 1 and now != valkeys

        # The job accepted before the crash is still there (the AOF), and a new one runs.
        # (a pooled connection from before the crash may still answer 503 + Retry-After once)
        kept = retry_503(lambda: client.get(f"/v1/jobs/{before['id']}"))
        assert kept.status_code == 200 and kept.json()["status"] == "succeeded", kept.text
        after = retry_503(lambda: client.post("/v1/jobs", json={**body, "seed": 8})).json()
        assert wait_for(client, after["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"

    # A second serve on the same data directory (another port) stops at once, saying why.
    second = subprocess.run(
        [sys.executable, "-m", "diffq", "serve"],
        env={**serve.env, "PORT": str(free_port()), "DIFFQ_WORKER_PORT": str(free_port_range(WORKER_PORTS))},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    data_dir = tmp_path / "var" / "valkey"
    assert second.returncode == 3, second
    assert f"{data_dir} is in use by diffq serve pid {serve.proc.pid}" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and not second.stdout

    # SIGKILL serve: nothing is left behind, and the data directory is free again.
    kids = [pid for pid, _ in children_of(serve.proc.pid)]
    assert len(kids) >= 3, kids  # Valkey, the gateway, the worker
    serve.proc.kill()
    serve.proc.wait(5)
    wait_until(f"children {kids} exit", lambda: all(gone(pid) for pid in kids), 15)
    os.close(lock_data_dir(data_dir))


def test_a_worker_whose_probe_port_is_taken_says_so_and_serve_backs_off(
    tmp_path: Path, serves: list[Serve]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = Serve(
            tmp_path,
            "serve",
            DIFFQ_WORKER_PORT=str(port),
            DIFFQ_RESTART_BACKOFF_SECONDS="0.3",
            DIFFQ_RESTART_BACKOFF_MAX_SECONDS="1.2",
        )
        serves.append(serve)
        why = (
            rf"worker-0 \({MNIST}\) cannot listen on its probe port 127\.0\.0\.1:{port} "
            rf"\(DIFFQ_WORKER_PORT={port} \+ 0\): in use by another process\?"
        )
        lines = serve.wait_for_line(rf"^{why}; restarting in [0-9.]+s$", timeout=40, count=4)
        delays = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in lines]
        assert delays[:4] == [0.3, 0.6, 1.2, 1.2]  # doubling to the cap, not every half second
        text = serve.text()
        assert "Traceback" not in text
        worker_errors = [line for line in text.splitlines() if "DIFFQ_WORKER_PORT to a free port" in line]
        assert len(worker_errors) >= 4 and f"127.0.0.1:{port}" in worker_errors[0]
        assert "diffq ready" not in text  # the gateway is up, but not every child is
    # The port is free again: the next restart comes up and only now is serve ready.
    serve.wait_for_line(rf"^worker-0 \({MNIST}\) is up again$", timeout=40)
    serve.wait_for_line(r"^diffq ready on ", timeout=5)
    serve.proc.send_signal(signal.SIGINT)
    assert serve.proc.wait(30) == 0


def test_a_valkey_failing_at_start_is_retried_and_serve_is_ready_once_it_starts(
    tmp_path: Path, serves: list[Serve]
) -> None:
    aof = tmp_path / "var" / "valkey" / "appendonlydir"
    aof.mkdir(parents=True)
    (aof / "appendonly.aof.manifest").write_text("not a manifest\n")  # Valkey refuses to start
    serve = Serve(
        tmp_path, "serve", DIFFQ_RESTART_BACKOFF_SECONDS="0.2", DIFFQ_RESTART_BACKOFF_MAX_SECONDS="0.8"
    )
    serves.append(serve)
    why = r"embedded Valkey exited with 1 \(.*Invalid AOF manifest file format\)"
    lines = serve.wait_for_line(rf"^{why}; restarting in [0-9.]+s$", timeout=30, count=5)
    delays = [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in lines]
    assert delays[:5] == [0.2, 0.4, 0.8, 0.8, 0.8]  # doubling to the cap, and not giving up
    assert serve.proc.poll() is None and "diffq ready" not in serve.text()
    started = [cmd for _, cmd in children_of(serve.proc.pid) if "-m diffq" in cmd]
    assert started == []  # the gateway and workers wait for Valkey instead of failing to connect

    shutil.rmtree(aof)  # repaired: the next restart comes up, then everything else
    serve.wait_for_line(r"^embedded Valkey on 127\.0\.0\.1:\d+ \(data in ", timeout=20)
    serve.wait_for_line(r"^diffq ready on ", timeout=60)
    with httpx.Client(base_url=serve.base, timeout=10) as client:
        body = {"model": MNIST, "class_label": 2, "num_images": 1, "seed": 5, "steps": 4}
        job = client.post("/v1/jobs", json=body).json()
        assert wait_for(client, job["id"], {"succeeded", "failed"}, timeout=60)["status"] == "succeeded"
    serve.proc.send_signal(signal.SIGINT)
    assert serve.proc.wait(30) == 0
    assert "Traceback" not in serve.text()


def test_a_gateway_refusing_its_settings_stops_serve_with_status_2(
    tmp_path: Path, serves: list[Serve]
) -> None:
    serve = Serve(tmp_path, "serve", DIFFQ_MAX_WAITERS="0")  # the gateway's bound: at least 1
    serves.append(serve)
    kids: set[int] = set()

    def stopped() -> bool:
        kids.update(pid for pid, _ in children_of(serve.proc.pid))
        return serve.proc.poll() is not None

    wait_until("serve stops", stopped, timeout=60, log=serve.log)
    assert serve.proc.returncode == 2, serve.text()
    text = serve.text()
    assert "max_waiters" in text  # the gateway's own line says which setting
    lines = [line for line in text.splitlines() if line.startswith("diffq serve: ")]
    assert lines == [
        "diffq serve: gateway exited with 2 before it came up: "
        "invalid settings (its output says which); stopping"
    ], text
    assert "restarting in" not in text and "diffq ready" not in text
    wait_until(f"children {kids} exit", lambda: all(gone(pid) for pid in kids), 15)


def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from diffq.serve import _popen; "
            "p = _popen(['sleep', '30']); print(p.pid, flush=True); os.kill(os.getpid(), 9)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert parent.returncode == -signal.SIGKILL
    pid = int(parent.stdout.strip())
    try:
        wait_until(f"sleep {pid} exits", lambda: gone(pid), 5)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
