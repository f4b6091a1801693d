"""`diffq serve`'s worker plan (pure): WORKERS per model, per-model overrides, distinct names
and probe ports; and the pure parts of its supervision (back-off, lock, exit reasons)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import cast

import pytest
from pydantic import ValidationError

from diffq.serve import (
    Child,
    DataDirLocked,
    ServeSettings,
    WorkerSlot,
    backoff_delay,
    describe_exit,
    lock_data_dir,
    next_failures,
    parse_workers_per_model,
    worker_plan,
)
from tests.stores import MNIST, TEXT_MODEL, text_model_store
from workers.http import ProbePortError, WorkerHealth, start_http


def test_every_model_gets_workers_numbered_across_models() -> None:
    plan = worker_plan(["a", "b"], 2, {}, 9200)
    assert plan == [
        WorkerSlot("worker-0", "a", 9200),
        WorkerSlot("worker-1", "a", 9201),
        WorkerSlot("worker-2", "b", 9202),
        WorkerSlot("worker-3", "b", 9203),
    ]


def test_per_model_counts_override_workers() -> None:
    plan = worker_plan(["a", "b", "c"], 1, {"a": 0, "c": 3}, 9300)
    assert [(s.model, s.name) for s in plan] == [
        ("b", "worker-0"),
        ("c", "worker-1"),
        ("c", "worker-2"),
        ("c", "worker-3"),
    ]
    assert len({s.port for s in plan}) == len(plan) and {s.port for s in plan} == set(range(9300, 9304))
    assert worker_plan(["a"], 0, {}, 9200) == []


def test_plan_refuses_unknown_models_and_ports_past_the_range() -> None:
    with pytest.raises(ValueError, match="nope"):
        worker_plan(["a"], 1, {"nope": 1}, 9200)
    assert worker_plan(["a"], 36, {}, 65500)[-1].port == 65535
    with pytest.raises(ValueError, match="65535"):
        worker_plan(["a"], 37, {}, 65500)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tiny-sd=2,mnist-cfg-unet=1", {"tiny-sd": 2, "mnist-cfg-unet": 1}),
        (" tiny-sd = 0 , ", {"tiny-sd": 0}),
        ("", {}),
    ],
)
def test_parse_counts(text: str, expected: dict[str, int]) -> None:
    assert parse_workers_per_model(text) == expected


@pytest.mark.parametrize("text", ["tiny-sd", "tiny-sd=two", "tiny-sd=-1", "Tiny=1", "a=1,a=2", "a=65", "=1"])
def test_parse_refuses_malformed_counts(text: str) -> None:
    with pytest.raises(ValueError):
        parse_workers_per_model(text)


def test_settings_read_the_counts_and_plan_over_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = text_model_store(tmp_path)
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("DIFFQ_WORKERS_PER_MODEL", f"{TEXT_MODEL}=1")
    monkeypatch.setenv("DIFFQ_MODEL_STORE", str(store))
    monkeypatch.setenv("DIFFQ_WORKER_PORT", "9400")
    plan = ServeSettings().plan()
    assert [(s.name, s.model, s.port) for s in plan] == [
        ("worker-0", MNIST, 9400),
        ("worker-1", MNIST, 9401),
        ("worker-2", TEXT_MODEL, 9402),
    ]
    monkeypatch.setenv("DIFFQ_WORKERS_PER_MODEL", "tiny-sd=lots")
    with pytest.raises(ValidationError, match="MODEL=COUNT"):
        ServeSettings()
    monkeypatch.setenv("DIFFQ_WORKERS_PER_MODEL", "other=1")
    with pytest.raises(ValueError, match="other"):
        ServeSettings().plan()


# Supervision (pure parts): the restart back-off, the exit descriptions, the data-dir lock.


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 30) for n in range(9)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(10_000, 0.2, 5) == 5  # no overflow however long it keeps failing


def test_a_child_that_ran_long_enough_starts_its_backoff_afresh() -> None:
    assert next_failures(0, 0.1) == 1
    assert next_failures(4, 2.0, stable=30) == 5
    assert next_failures(4, 30.0, stable=30) == 1


def test_exits_in_words() -> None:
    assert describe_exit(1) == "exited with 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


class FakeProc:
    """Stands in for a Popen: ``code`` is what poll() answers (None while running)."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


def test_child_restarts_with_backoff_and_is_up_only_once_its_probe_passes() -> None:
    procs: list[FakeProc] = []
    probe = {"ok": False}

    def spawn() -> subprocess.Popen[bytes]:
        procs.append(FakeProc())
        return cast("subprocess.Popen[bytes]", procs[-1])

    child = Child("worker-0 (m)", spawn, lambda: probe["ok"])
    assert child.check(0.0, 1.0, 4.0) is None and len(procs) == 1  # started
    assert not child.up and child.why == "is starting"
    for crash_at, delay in [(1.0, 1.0), (3.0, 2.0), (6.0, 4.0), (11.0, 4.0)]:
        procs[-1].code = 1
        line = child.check(crash_at, 1.0, 4.0)
        assert line == f"worker-0 (m) exited with 1; restarting in {delay:.1f}s"
        assert child.check(crash_at + delay - 0.01, 1.0, 4.0) is None and procs[-1].code == 1  # waits
        child.check(crash_at + delay, 1.0, 4.0)
        assert procs[-1].code is None and not child.up  # restarted, not up until its probe passes
    assert child.history == [1.0, 2.0, 4.0, 4.0]
    probe["ok"] = True
    assert child.check(20.0, 1.0, 4.0) == "worker-0 (m) is up again" and child.up
    procs[-1].code = -signal.SIGKILL  # a crash long after the last start: back to the first delay
    assert child.check(60.0, 1.0, 4.0) == "worker-0 (m) was killed by SIGKILL; restarting in 1.0s"


def test_data_dir_lock_refuses_a_second_holder_naming_the_dir_and_pid(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    fd = lock_data_dir(data)
    try:
        assert (data / "serve.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLocked, match=rf"{data}.*pid {os.getpid()}"):
            lock_data_dir(data)
    finally:
        os.close(fd)
    os.close(lock_data_dir(data))  # released with its descriptor


def test_a_taken_probe_port_is_one_clear_error_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ProbePortError, match=rf"127\.0\.0\.1:{port}.*DIFFQ_WORKER_PORT"):
            start_http("127.0.0.1", port, WorkerHealth(stall_seconds=1))
