"""`diffq serve`'s worker plan (pure): WORKERS per model, per-model overrides, distinct names
and probe ports."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from diffq.serve import ServeSettings, WorkerSlot, parse_workers_per_model, worker_plan
from tests.stores import MNIST, TEXT_MODEL, text_model_store


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
