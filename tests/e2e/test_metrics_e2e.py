"""Scrape the gateway (two uvicorn processes) and a worker after real jobs: the families exist,
moved by exactly what the jobs did, carry no job ids, and cover what the dashboard plots."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, wait_for
from tests.deploy_checks import DASHBOARD, dashboard_metric_names

MODEL = "mnist-cfg-unet"
# Guided (a class and guidance != 1): two denoiser rows per image per step.
GUIDED = {"class_label": 3, "num_images": 2, "steps": 6, "sampler": "ddim", "guidance_scale": 2.0, "seed": 5}
# Unconditional: one row per image per step.
PLAIN = {"class_label": None, "num_images": 1, "steps": 4, "sampler": "dpmpp_2m", "seed": 6}
GUIDED_EVALS, PLAIN_EVALS = 2 * 2 * 6, 1 * 4
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 if absent (a counter child not created yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    @property
    def families(self) -> set[str]:
        names = set()
        for name, _ in self.samples:
            for suffix in HIST_SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
        return names


def scrape(url: str) -> Scrape:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


@pytest.fixture
def stack(make_stack) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    s: Stack = make_stack(DIFFQ_GATEWAY_PROCESSES="2", DIFFQ_MAX_WAIT_MS="200")
    s.start_gateway()
    yield s


def test_metrics_move_by_what_the_jobs_did(stack: Stack) -> None:
    gw = stack.base_url
    before = scrape(gw)
    assert before.value("diffq_build_info", version="0.1.0", component="gateway", python=_python(before)) == 1

    with httpx.Client(base_url=gw, timeout=10) as client:
        # With no worker yet, jobs wait: one is cancelled while queued, two stay queued.
        dropped = client.post("/v1/jobs", json={**PLAIN, "seed": 7}).json()["id"]
        assert client.delete(f"/v1/jobs/{dropped}").json()["status"] == "cancelled"
        ids = [client.post("/v1/jobs", json=body).json()["id"] for body in (GUIDED, PLAIN)]
        assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404
        assert client.get("/no/such/route").status_code == 404

        queued = scrape(gw)
        assert queued.value("diffq_queue_depth", model=MODEL) == 2  # the cancelled one is not work
        assert queued.value("diffq_queue_evaluations", model=MODEL) == GUIDED_EVALS + PLAIN_EVALS
        assert queued.value("diffq_queue_oldest_age_seconds", model=MODEL) > 0
        assert queued.value("diffq_workers_live", model=MODEL) == 0
        assert queued.value("diffq_redis_up") == 1
        moved = _delta(before, queued)
        assert moved("diffq_jobs_submitted_total", model=MODEL) == 3
        assert moved("diffq_jobs_finished_total", model=MODEL, status="cancelled") == 1
        # Counted across both gateway processes, under route templates, never raw paths.
        assert moved("diffq_http_requests_total", method="POST", route="/v1/jobs", status_code="202") == 3
        assert (
            moved("diffq_http_requests_total", method="DELETE", route="/v1/jobs/{job_id}", status_code="200")
            == 1
        )
        assert (
            moved("diffq_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status_code="404")
            == 1
        )
        assert moved("diffq_http_requests_total", method="GET", route="unmatched", status_code="404") == 1
        assert moved("diffq_http_request_duration_seconds_count", method="POST", route="/v1/jobs") == 3

        stack.start_worker("worker-m")
        stack.wait_ready()
        worker_url = stack.worker_urls["worker-m"]
        for job_id in ids:
            assert wait_for(client, job_id, {"succeeded", "failed"})["status"] == "succeeded"

        for probe in ("livez", "readyz"):
            r = httpx.get(f"{worker_url}/{probe}", timeout=5)
            assert r.status_code == 200, r.text
        w = scrape(worker_url)
        after = scrape(gw)

    labels = {"model": MODEL}
    assert w.value("diffq_build_info", version="0.1.0", component="worker", python=_python(w)) == 1
    assert w.value("diffq_model_load_seconds", **labels) > 0
    assert w.value("diffq_jobs_finished_total", **labels, status="succeeded") == 2
    assert w.value("diffq_jobs_finished_total", **labels, status="failed") == 0
    assert w.value("diffq_images_generated_total", **labels) == GUIDED["num_images"] + PLAIN["num_images"]
    for phase in ("queue", "run", "total"):
        assert w.value("diffq_job_duration_seconds_count", **labels, phase=phase) == 2
    # Every image passes through each of its steps exactly once, whatever the batching.
    image_steps = GUIDED["num_images"] * GUIDED["steps"] + PLAIN["num_images"] * PLAIN["steps"]
    assert w.value("diffq_batch_images_sum", **labels) == image_steps
    assert w.value("diffq_batch_rows_sum", **labels) == GUIDED_EVALS + PLAIN_EVALS
    calls = w.value("diffq_denoiser_call_duration_seconds_count", **labels)
    assert calls == w.value("diffq_batch_images_count", **labels)
    assert max(GUIDED["steps"], PLAIN["steps"]) <= calls <= GUIDED["steps"] + PLAIN["steps"]
    assert w.value("diffq_denoiser_call_duration_seconds_sum", **labels) > 0
    assert w.value("diffq_denoiser_call_duration_seconds_sum", **labels) <= w.value(
        "diffq_worker_busy_seconds_total", **labels
    )
    assert w.value("diffq_worker_jobs_in_flight", **labels) == 0
    assert w.value("diffq_worker_images_in_flight", **labels) == 0
    for name in ("diffq_job_retries_total", "diffq_job_reclaims_total", "diffq_dead_letters_total"):
        assert w.has(name, **labels) and w.value(name, **labels) == 0

    assert after.value("diffq_queue_depth", model=MODEL) == 0
    assert after.value("diffq_queue_evaluations", model=MODEL) == 0
    assert after.value("diffq_workers_live", model=MODEL) == 1

    # No job id, in any form, reaches a label.
    for text in (w.text, after.text):
        assert not any(job_id in text for job_id in [*ids, dropped])

    # One JSON log line per state change, with the job id; no request bodies.
    states = _job_states(stack)
    assert states[dropped] == ["queued", "cancelled"]
    for job_id in ids:
        assert states[job_id] == ["queued", "running", "succeeded"]

    missing = dashboard_metric_names(DASHBOARD) - (w.families | after.families)
    assert not missing, f"the dashboard plots metrics nobody exports: {sorted(missing)}"


def _job_states(stack: Stack) -> dict[str, list[str]]:
    assert stack.logs is not None
    lines = [
        json.loads(line)
        for name in ("gateway", "worker-m")
        for line in (stack.logs / f"{name}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert not any("class_label" in json.dumps(line) for line in lines)
    events = sorted((line for line in lines if line["msg"] == "job state"), key=lambda line: line["ts"])
    states: dict[str, list[str]] = {}
    for e in events:
        states.setdefault(e["job_id"], []).append(e["status"])
    return states


def _python(s: Scrape) -> str:
    return next(dict(labels)["python"] for name, labels in s.samples if name == "diffq_build_info")


def _delta(before: Scrape, after: Scrape):  # type: ignore[no-untyped-def]
    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    return moved
