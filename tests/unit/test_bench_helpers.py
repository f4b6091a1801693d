"""The benchmarks' pure helpers: statistics, workloads, the raw HTTP reader, the in-process replay.

No processes and no timing assertions: speed is measured by `make bench`, never asserted here.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from bench.client import parse_head, post_request
from bench.inprocess import run_jobs
from bench.stack import _sample
from bench.stats import format_ratio, knee, median, percentile, ratio, verdict
from bench.workload import (
    MIX_SAMPLERS,
    MIX_STEPS,
    NEGATIVE_PROMPTS,
    TEXT_GUIDANCE,
    TEXT_IMAGES,
    TEXT_PROMPTS,
    TEXT_STEPS,
    Request,
    job_mix,
    poisson_arrivals,
    text_mix,
    uniform_jobs,
)
from model_store.store import ModelStore
from workers.engine import CallStats


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = list(np.random.default_rng(3).exponential(100, 37))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert percentile([5.0], 99) == 5.0
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_knee_is_the_smallest_batch_near_the_best() -> None:
    curve = {1: 300.0, 2: 420.0, 4: 480.0, 8: 500.0, 16: 510.0, 32: 490.0}
    assert knee(curve) == 8  # 500 >= 0.95 * 510
    assert knee(curve, 1.0) == 16
    assert knee(curve, 0.5) == 1
    assert knee({64: 1.0}) == 64
    with pytest.raises(ValueError):
        knee({})
    with pytest.raises(ValueError):
        knee(curve, 0)


def test_ratio_and_verdicts() -> None:
    assert ratio(3, 4) == 0.75
    assert math.isnan(ratio(1, 0))
    assert verdict(0.96, 0.95, higher_is_better=True) == "met"
    assert verdict(0.94, 0.95, higher_is_better=True) == "missed"
    assert verdict(0.5, 0.6, higher_is_better=False) == "met"
    assert verdict(math.nan, 0.6, higher_is_better=False) == "n/a"
    assert format_ratio(0.931) == "0.93x"
    assert format_ratio(0.931, 0.95) == "0.93x (>= 0.95x: missed)"
    assert format_ratio(0.45, 0.6, higher_is_better=False) == "0.45x (<= 0.60x: met)"
    assert format_ratio(math.nan, 0.7) == "n/a (>= 0.70x: n/a)"


def test_poisson_arrivals_are_seeded_increasing_and_at_the_rate() -> None:
    a = poisson_arrivals(5.0, 4000, seed=1)
    assert a == poisson_arrivals(5.0, 4000, seed=1)
    assert a != poisson_arrivals(5.0, 4000, seed=2)
    assert all(x < y for x, y in itertools.pairwise(a)) and a[0] > 0
    gaps = np.diff([0.0, *a])
    assert statistics.fmean(gaps) == pytest.approx(1 / 5.0, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 5.0, rel=0.1)  # exponential: sd = mean
    with pytest.raises(ValueError):
        poisson_arrivals(0, 1, seed=0)


def test_job_mix_stays_in_bounds_and_is_seeded() -> None:
    jobs = job_mix(500, seed=7)
    assert jobs == job_mix(500, seed=7)
    assert {j.sampler for j in jobs} == set(MIX_SAMPLERS)
    assert min(j.steps for j in jobs) >= MIX_STEPS[0] and max(j.steps for j in jobs) <= MIX_STEPS[1]
    assert all(j.num_images == 1 and j.guidance_scale == 1.5 for j in jobs)


def test_request_rows_and_body() -> None:
    guided = Request("ddim", 10, 3, 1.5, seed=1, num_images=2)
    assert guided.rows_per_step == 4 and guided.evaluations == 40
    assert Request("ddim", 10, None, 1.5, seed=1).rows_per_step == 1  # unconditional
    assert Request("ddim", 10, 3, 1.0, seed=1).rows_per_step == 1  # plain conditional
    assert guided.body() == {
        "class_label": 3,
        "num_images": 2,
        "steps": 10,
        "sampler": "ddim",
        "guidance_scale": 1.5,
        "seed": 1,
    }
    jobs = uniform_jobs(12, "dpmpp_2m", 8, 1.5, seed=100)
    assert [j.class_label for j in jobs[:11]] == [*range(10), 0]
    assert len({j.seed for j in jobs}) == 12


def test_text_mix_is_seeded_guided_and_in_bounds() -> None:
    sizes = (None, (48, 32))
    jobs = text_mix(300, seed=5, sizes=sizes, samplers=("ddim", "dpmpp_2m"))
    assert jobs == text_mix(300, seed=5, sizes=sizes, samplers=("ddim", "dpmpp_2m"))
    assert jobs != text_mix(300, seed=6, sizes=sizes, samplers=("ddim", "dpmpp_2m"))
    assert {j.sampler for j in jobs} == {"ddim", "dpmpp_2m"}
    assert {j.steps for j in jobs} == set(range(TEXT_STEPS[0], TEXT_STEPS[1] + 1))
    assert {j.num_images for j in jobs} == set(range(TEXT_IMAGES[0], TEXT_IMAGES[1] + 1))
    assert {(j.width, j.height) for j in jobs} == {(None, None), (48, 32)}
    assert all(j.class_label is None and j.guidance_scale == TEXT_GUIDANCE for j in jobs)
    # Prompts repeat (a few drawn many times); about a third carry a negative prompt.
    assert {j.prompt for j in jobs} == set(TEXT_PROMPTS)
    negatives = [j.negative_prompt for j in jobs if j.negative_prompt is not None]
    assert set(negatives) == set(NEGATIVE_PROMPTS) and 0.2 < len(negatives) / len(jobs) < 0.45
    assert len({j.seed for j in jobs}) == len(jobs)


def test_text_request_resolves_and_posts_its_prompt_and_size() -> None:
    job = Request("ddim", 10, None, 7.5, seed=3, num_images=2, prompt="a cat", width=48, height=32)
    req = job.job_request("tiny-sd")
    assert (req.model, req.prompt, req.negative_prompt, req.width, req.height) == (
        "tiny-sd",
        "a cat",
        None,
        48,
        32,
    )
    assert req.guided and job.rows_per_step == 4 and job.evaluations == 40
    body = job.body()
    assert (body["prompt"], body["width"], body["height"]) == ("a cat", 48, 32)
    assert "negative_prompt" not in body  # unset fields are left to the gateway's defaults
    assert (
        Request("ddim", 10, None, 7.5, seed=3, prompt="a", negative_prompt="b").body()["negative_prompt"]
        == "b"
    )


def test_raw_http_head_parsing() -> None:
    head = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\nContent-Length: 17"
    assert parse_head(head) == (202, 17)
    with pytest.raises(ValueError):
        parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked")
    raw = post_request("127.0.0.1", 8000, "/v1/jobs", b'{"a":1}')
    assert raw.startswith(b"POST /v1/jobs HTTP/1.1\r\n") and raw.endswith(b'content-length: 7\r\n\r\n{"a":1}')


def test_sample_from_exposition() -> None:
    text = (
        "# HELP diffq_worker_tick_rows rows\n"
        'diffq_worker_tick_rows{model="mnist-cfg-unet"} 48.0\n'
        "diffq_worker_tick_rows_other 3\n"
    )
    assert _sample(text, "diffq_worker_tick_rows") == 48.0
    assert _sample("plain_family 2\n", "plain_family") == 2.0
    assert _sample(text, "diffq_absent") is None


class FakeEngine:
    """Stands in for the ONNX engine: predicts zeros and records each call's size."""

    def __init__(self) -> None:
        self.manifest = ModelStore().get("mnist-cfg-unet").manifest
        self.stats = CallStats()
        self.sizes: list[int] = []

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_label: np.ndarray) -> np.ndarray:
        self.sizes.append(len(timestep))
        self.stats.last_rows = len(timestep)
        return np.zeros_like(sample)


def test_inprocess_replay_runs_every_job_within_the_row_budget() -> None:
    engine = FakeEngine()
    jobs = [*job_mix(6, seed=1), Request("ddim", 3, None, 1.5, seed=9, num_images=3)]
    run = run_jobs(engine, jobs, max_rows=8, encode=False)  # type: ignore[arg-type]
    assert run.images == 9
    assert run.evaluations == sum(j.evaluations for j in jobs) == sum(engine.sizes)
    assert run.calls == len(engine.sizes) and max(engine.sizes) <= 8
