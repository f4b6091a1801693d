"""The simulated denoisers and stages (``bench.simulated``) and the pure parts of figures 7, 8
and 9 (``bench.ceiling``, ``bench.report``). No wall-clock assertions: sleeps are recorded, not
timed."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from bench.ceiling import (
    Ceiling,
    Drain,
    EndToEnd,
    EngineShare,
    PipelineDrain,
    SimulatedDevice,
    calls_between,
    command_calls,
    jobs_finished,
    ping_per_job,
    script_calls,
    span,
    stage_seconds,
)
from bench.report import Results, render
from bench.simulated import (
    H200_CURVE,
    OUTPUT_SCALE,
    LatencyCurve,
    SimulatedComponent,
    SimulatedEngine,
    simulated,
    simulated_stages,
)
from bench.workload import TEXT_PROMPTS, unique_prompt_jobs
from diffq.jobs import Job, JobRequest, Status
from model_store.manifest import ComponentSpec, TensorSpec
from model_store.store import ModelStore
from workers.calibration import GPU_SIZES, SIZES, measure_curve, sizes_for
from workers.engine import Component, Engine, EngineOptions
from workers.main import load_stages
from workers.pipeline import TEXT_ENCODER, VAE_DECODER


# ---- the latency curve ------------------------------------------------------------------
def test_latency_at_measured_sizes_is_rows_over_rate() -> None:
    curve = LatencyCurve(H200_CURVE)
    for size, rate in H200_CURVE.items():
        assert curve(size) == pytest.approx(size / rate)
    assert curve(1024) == pytest.approx(1024 / 111_764)


def test_latency_is_linear_in_rows_between_sizes() -> None:
    curve = LatencyCurve({8: 800.0, 16: 800.0 * 16 / 8 / 1.5})  # 10 ms at 8 rows, 15 ms at 16
    assert curve(8) == pytest.approx(0.010)
    assert curve(16) == pytest.approx(0.015)
    assert curve(12) == pytest.approx(0.0125)
    assert curve(10) == pytest.approx(0.010 + 2 * 0.005 / 8)


def test_latency_beyond_the_ends_uses_the_end_rates() -> None:
    curve = LatencyCurve(H200_CURVE)
    assert curve(4096) == pytest.approx(4096 / 111_794)  # the largest size's rate
    assert curve(0) == 0.0
    small = LatencyCurve({4: 400.0, 8: 1000.0})
    assert small(2) == pytest.approx(2 / 400)  # below the smallest: its rate


def test_h200_latency_grows_with_rows_and_best_is_the_curve_max() -> None:
    curve = LatencyCurve(H200_CURVE)
    latencies = [curve(rows) for rows in range(1, 3000, 7)]
    assert all(a < b for a, b in itertools.pairwise(latencies))
    assert curve.best_rows_per_second == 111_794


@pytest.mark.parametrize("bad", [{}, {0: 10.0}, {8: 0.0}, {8: -1.0}])
def test_latency_curve_refuses_bad_curves(bad: dict[int, float]) -> None:
    with pytest.raises(ValueError):
        LatencyCurve(bad)


# ---- the simulated engine ---------------------------------------------------------------
@pytest.fixture(scope="module")
def real_engine() -> Engine:
    stored = ModelStore().get("mnist-cfg-unet")
    return Engine(stored.verify_all(), stored.manifest, EngineOptions(intra_op_threads=1))


def _inputs(engine: Engine, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, *engine.manifest.sample_shape()), dtype=np.float32)
    return x, np.full(rows, 500, dtype=np.float32), engine.example_condition(rows)


def test_simulated_run_sleeps_the_curve_and_records_the_rows(real_engine: Engine) -> None:
    slept: list[float] = []
    curve = LatencyCurve(H200_CURVE)
    engine = SimulatedEngine(real_engine, curve, "cuda", sleep=slept.append)
    x, t, c = _inputs(engine, 100)
    out = engine.run(x, t, c)
    assert slept == [pytest.approx(curve(100))]
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, x * OUTPUT_SCALE, rtol=1e-6)
    assert (engine.stats.calls, engine.stats.rows) == (1, 100)
    engine.run(*_inputs(engine, 3))
    assert (engine.stats.calls, engine.stats.rows, engine.stats.last_rows) == (2, 103, 3)
    assert slept[-1] == pytest.approx(curve(3))
    assert real_engine.stats.calls == 0  # the real engine never ran


def test_zero_cost_engine_never_sleeps(real_engine: Engine) -> None:
    slept: list[float] = []
    engine = SimulatedEngine(real_engine, None, real_engine.device, sleep=slept.append)
    x, t, c = _inputs(engine, 5)
    assert engine.run(x, t, c).shape == x.shape
    assert slept == []
    assert engine.stats.rows == 5


def test_simulated_devices_as_the_worker_sees_them(real_engine: Engine) -> None:
    h200 = simulated("h200")(real_engine)
    assert isinstance(h200, SimulatedEngine)
    assert h200.device == "cuda" and sizes_for(h200.device) == GPU_SIZES  # calibration goes large
    assert not h200.padded and not h200.cuda_graph and not h200.io_binding
    assert h200.latency is not None and h200.latency(2048) == pytest.approx(2048 / 111_794)
    assert h200.manifest is real_engine.manifest
    assert h200.example_condition(4).shape == (4,)
    assert h200.warm_up() == 0.0 and h200.stats.calls == 0
    zero = simulated("zero")(real_engine)
    assert isinstance(zero, SimulatedEngine) and zero.latency is None
    assert sizes_for(zero.device) == SIZES
    with pytest.raises(ValueError):
        simulated("tpu")


def test_calibration_measures_the_simulated_calls(real_engine: Engine) -> None:
    """What ``build_worker`` runs when DIFFQ_MAX_BATCH_ROWS=0: every size goes through the
    simulated call (the sleeps recorded, so no time passes)."""
    slept: list[float] = []
    curve = LatencyCurve(H200_CURVE)
    engine = SimulatedEngine(real_engine, curve, "cuda", sleep=slept.append)
    sizes = sizes_for(engine.device)
    measured = measure_curve(
        engine.run, engine.manifest.sample_shape(), engine.example_condition, sizes, 0.0, rounds=1
    )
    assert sorted(measured) == sorted(sizes)
    assert {round(s, 12) for s in slept} == {round(curve(size), 12) for size in sizes}


# ---- figures 7 and 8: the arithmetic ----------------------------------------------------
def _drain(**changes: object) -> Drain:
    values: dict[str, object] = {
        "device": "zero",
        "jobs": 1000,
        "sampler": "dpmpp_2m",
        "steps": 8,
        "guidance_scale": 1.0,
        "rows_per_job": 1,
        "max_batch_rows": 64,
        "seconds": 2.0,
        "failed": 0,
        "commands": 30_000,
        "script_calls": 2_500,
        "round_trips": 200,
        "worker_commands": 2_600,
        "background_commands": 0,
        "startup_commands": 20,
        "top_commands": (("hset", 10_000),),
        "ping_per_second": 10_000.0,
        "ping_range": (9_000.0, 11_000.0),
        "engine": EngineShare(0.01, 125, 8000),
    }
    return Drain(**(values | changes))  # type: ignore[arg-type]


def test_ping_per_job_is_ping_rate_over_job_rate() -> None:
    assert ping_per_job(10_000, 500) == 20
    assert ping_per_job(12_000, 6_000) == 2
    assert math.isnan(ping_per_job(10_000, 0))


def test_drain_figures() -> None:
    d = _drain()
    assert d.jobs_per_second == 500
    assert d.image_steps_per_second == 4000
    assert d.rows_per_second == 4000
    assert d.commands_per_job == 30
    assert d.script_calls_per_job == 2.5
    assert d.round_trips_per_job == 0.2
    assert d.worker_commands_per_job == 2.6
    assert d.ping_per_job == 20
    guided = _drain(rows_per_job=2, failed=200)  # failures do not count as throughput
    assert guided.jobs_per_second == 400 and guided.rows_per_second == 6400
    assert _drain(round_trips=None, worker_commands=None).round_trips_per_job is None


def test_end_to_end_rate() -> None:
    assert EndToEnd(clients=32, seconds=4.0, succeeded=2000, other=3).jobs_per_second == 500


def _simulated(**changes: object) -> SimulatedDevice:
    values: dict[str, object] = {
        "curve": dict(H200_CURVE),
        "jobs": 1000,
        "sampler": "dpmpp_2m",
        "steps": 8,
        "guidance_scale": 1.5,
        "rows_per_job": 2,
        "max_batch_rows": 1024,
        "seconds": 4.0,
        "submit_seconds": 3.5,
        "failed": 0,
        "engine": EngineShare(0.5, 40, 16_000),
        "drain": None,
    }
    return SimulatedDevice(**(values | changes))  # type: ignore[arg-type]


def test_simulated_device_ratio_is_service_rows_over_the_curve_best() -> None:
    s = _simulated()
    assert s.rows_per_second == 4000  # 1000 jobs x 8 steps x 2 rows in 4 s
    assert s.image_steps_per_second == 2000
    assert s.best_rows_per_second == 111_794
    assert s.efficiency == pytest.approx(4000 / 111_794)
    assert _simulated(seconds=16_000 / 111_794 / 0.9).efficiency == pytest.approx(0.9)
    assert _simulated(submit_seconds=2.0).submitted_per_second == 500


def test_commandstats_deltas_leave_out_info_and_idle_commands() -> None:
    before = command_calls(
        {"cmdstat_hset": {"calls": 10, "usec": 5}, "cmdstat_info": {"calls": 3}, "cmdstat_ping": {"calls": 7}}
    )
    after = command_calls(
        {
            "cmdstat_hset": {"calls": 50, "usec": 9},
            "cmdstat_info": {"calls": 9},
            "cmdstat_ping": {"calls": 7},
            "cmdstat_evalsha": {"calls": 4},
            "cmdstat_fcall": {"calls": 2},
            "errorstat_ERR": {"count": 1},
        }
    )
    assert after["hset"] == 50 and "errorstat_ERR" not in after
    delta = calls_between(before, after)
    assert delta == {"hset": 40, "evalsha": 4, "fcall": 2}
    assert script_calls(delta) == 6


def test_jobs_finished_sums_the_statuses() -> None:
    text = (
        "# HELP diffq_jobs_finished_total Jobs that reached a terminal status.\n"
        'diffq_jobs_finished_total{model="m",status="succeeded"} 1500.0\n'
        'diffq_jobs_finished_total{model="m",status="failed"} 2.0\n'
        'diffq_jobs_finished_created{model="m",status="failed"} 1.7e9\n'
    )
    assert jobs_finished(text) == {"succeeded": 1500, "failed": 2}
    assert jobs_finished("") == {}


def test_span_runs_from_first_start_to_last_finish_of_the_successes() -> None:
    request = JobRequest("m", 1, 1, 8, "dpmpp_2m", 1.0, 0)

    def job(status: Status, started: float | None, finished: float | None) -> Job:
        return Job("j", request, status, 90.0, started_at=started, finished_at=finished)

    jobs = [
        job(Status.SUCCEEDED, 100.0, 101.0),
        job(Status.SUCCEEDED, 100.5, 103.0),
        job(Status.FAILED, 99.0, 110.0),
        None,
    ]
    assert span(jobs) == (3.0, 2)


# ---- the report -------------------------------------------------------------------------
def test_report_shows_figures_7_and_8_with_their_verdicts(tmp_path: Path) -> None:
    r = Results(command="python -m bench", quick=True, machine={})
    r.ceiling = Ceiling(_drain(), EndToEnd(32, 4.0, 2000, 0))
    r.simulated = _simulated(drain=_drain(device="h200", rows_per_job=2, seconds=1.0))
    text = render(r, {})
    assert "## 7. Zero-cost ceiling" in text and "## 8. Simulated device (H200 curve)" in text
    assert (
        "| 7. zero-cost worker: drain cost per job in PING round trips | 20.0 (500 jobs/s) | <= 2 | missed |"
        in text
    )
    assert "| 7. zero-cost worker, end to end over HTTP | 500 jobs/s |" in text
    assert "| 8. simulated H200: service / engine best rows/s | 0.04x | >= 0.90x | missed |" in text
    assert "**4,000 rows/s**" in text
    assert "0.14x of the engine's best" in text  # the drain: 16,000 rows in 1 s
    fast = Results(command="", quick=True, machine={})
    fast.ceiling = Ceiling(_drain(ping_per_second=1000.0), EndToEnd(32, 4.0, 2000, 0))
    assert "| 2.0 (500 jobs/s) | <= 2 | met |" in render(fast, {})


def test_report_says_how_fast_figure_8s_jobs_arrived() -> None:
    r = Results(command="", quick=True, machine={})
    r.simulated = _simulated(submit_seconds=2.0)  # 1000 jobs in 2 s, 16 rows each
    assert "they arrived at 500 jobs/s (8,000 rows/s of work)" in render(r, {})


# ---- figure 9: the tiny SD pipeline on free stages --------------------------------------
@pytest.fixture
def decoder_like(tmp_path: Path) -> Component:
    """A real ONNX component shaped like a VAE decoder: [B, 2, h, w] -> [B, 2, 2h, 2w], each
    output a function of its own row (tiled, scaled by 0.5 and shifted by 1)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Tile", ["z", "reps"], ["tiled"]),
            helper.make_node("Mul", ["tiled", "half"], ["scaled"]),
            helper.make_node("Add", ["scaled", "one"], ["image"]),
        ],
        "decoder_like",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 2, "h", "w"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 2, "h2", "w2"])],
        [
            helper.make_tensor("reps", TensorProto.INT64, [4], [1, 1, 2, 2]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "decoder_like.onnx"
    onnx.save(model, str(path))
    spec = ComponentSpec(
        file=path.name,
        sha256="0" * 64,
        inputs=[TensorSpec(name="z", dtype="float32", shape=["b", 2, "h", "w"])],
        outputs=[TensorSpec(name="image", dtype="float32", shape=["b", 2, "h2", "w2"])],
    )
    return Component(path, spec, EngineOptions(intra_op_threads=1))


def test_free_component_copies_the_real_output_of_its_first_row(decoder_like: Component) -> None:
    rng = np.random.default_rng(0)
    free = SimulatedComponent(decoder_like)
    x = rng.standard_normal((5, 2, 3, 4), dtype=np.float32)
    out = free.run(x)
    first = decoder_like.run(x[:1])
    assert not np.array_equal(first, np.zeros_like(first))  # a real output, not zeros
    assert out.shape == (5, 2, 6, 8) and out.dtype == first.dtype
    for row in out:
        np.testing.assert_array_equal(row, first[0])
    assert not np.array_equal(out[1], decoder_like.run(x[1:2])[0])  # rows are copies, not computed
    calls_before = decoder_like.stats.calls
    free.run(rng.standard_normal((3, 2, 3, 4), dtype=np.float32))  # same shape: no real call
    assert decoder_like.stats.calls == calls_before
    other = free.run(rng.standard_normal((2, 2, 4, 4), dtype=np.float32))  # a new shape: one real call
    assert other.shape == (2, 2, 8, 8) and decoder_like.stats.calls == calls_before + 1
    assert (free.stats.calls, free.stats.rows) == (3, 10)  # the free calls, as the worker counts them


def test_simulated_stages_are_free_on_zero_and_real_elsewhere(decoder_like: Component) -> None:
    wrap = simulated_stages("zero")
    assert wrap is not None
    free = wrap(VAE_DECODER, decoder_like)
    assert isinstance(free, SimulatedComponent) and free.spec is decoder_like.spec
    assert simulated_stages("h200") is None  # no H200 curve of any stage: the real ones run
    with pytest.raises(ValueError):
        simulated_stages("tpu")


def test_unique_prompt_jobs_never_repeat_a_prompt() -> None:
    jobs = unique_prompt_jobs(3 * len(TEXT_PROMPTS), "dpmpp_2m", 8, 1.0, seed=5)
    prompts = [j.prompt for j in jobs]
    assert len(set(prompts)) == len(prompts)
    assert all(
        p is not None and p.startswith(TEXT_PROMPTS[i % len(TEXT_PROMPTS)]) for i, p in enumerate(prompts)
    )
    assert [j.seed for j in jobs[:3]] == [5, 6, 7]
    assert {(j.sampler, j.steps, j.num_images, j.class_label) for j in jobs} == {("dpmpp_2m", 8, 1, None)}
    assert "prompt" in jobs[0].body() and "class_label" in jobs[0].body()


def test_stage_seconds_sum_each_stage() -> None:
    text = (
        'diffq_stage_duration_seconds_sum{model="m",stage="text_encoder"} 0.25\n'
        'diffq_stage_duration_seconds_count{model="m",stage="text_encoder"} 4.0\n'
        'diffq_stage_duration_seconds_sum{model="m",stage="vae_decoder"} 1.5\n'
        'diffq_stage_duration_seconds_bucket{model="m",stage="vae_decoder",le="0.1"} 2.0\n'
    )
    assert stage_seconds(text) == {"text_encoder": 0.25, "vae_decoder": 1.5}
    assert stage_seconds("") == {}


def _pipeline(**changes: object) -> PipelineDrain:
    values: dict[str, object] = {
        "model": "tiny-sd",
        "jobs": 2000,
        "sampler": "dpmpp_2m",
        "steps": 8,
        "guidance_scale": 1.0,
        "rows_per_job": 1,
        "max_batch_rows": 256,
        "seconds": 4.0,
        "failed": 0,
        "engine": EngineShare(0.01, 63, 16_000),
        "stage_seconds": {"text_encoder": 0.02, "vae_decoder": 0.05},
    }
    return PipelineDrain(**(values | changes))  # type: ignore[arg-type]


def test_pipeline_drain_rates_and_report() -> None:
    p = _pipeline()
    assert p.jobs_per_second == 500 and p.image_steps_per_second == 4000
    assert _pipeline(failed=400).jobs_per_second == 400
    r = Results(command="", quick=True, machine={})
    r.pipeline_ceiling = p
    alone = render(r, {})
    assert "## 9. Tiny SD pipeline on free stages" in alone and "| jobs/s | **500** |" in alone
    assert "(7 not measured)" in alone
    r.ceiling = Ceiling(_drain(seconds=0.5), EndToEnd(32, 4.0, 2000, 0))  # 1000 jobs in 0.5 s
    text = render(r, {})
    assert "| 9. tiny SD on free stages: zero-cost drain | 500 jobs/s (0.25x of 7's) | - | - |" in text
    assert "| against 7's drain (2000 jobs/s) | 0.25x |" in text
    assert "text_encoder 0.02 s, vae_decoder 0.05 s" in text


def test_load_stages_hands_each_stage_to_the_wrap() -> None:
    """What ``bench.simulated_worker --device zero`` does to a text-to-image model's stages."""
    stored = ModelStore().get("shapes-sd")
    seen: list[str] = []

    def wrap(stage: str, real: Component) -> Component:
        seen.append(stage)
        return SimulatedComponent(real)

    encoder, decoder = load_stages(stored, EngineOptions(intra_op_threads=1), wrap)
    assert seen == [TEXT_ENCODER, VAE_DECODER]
    assert encoder is not None and isinstance(encoder.component, SimulatedComponent)
    assert isinstance(decoder.component, SimulatedComponent)
    real_encoder, _ = load_stages(stored, EngineOptions(intra_op_threads=1))
    assert real_encoder is not None and not isinstance(real_encoder.component, SimulatedComponent)
    states = encoder.encode(["a red circle", "a blue square"])
    want = real_encoder.encode(["a red circle"])[0]
    assert states[0].shape == want.shape
    np.testing.assert_array_equal(states[0], want)  # the first row is the real encoder's
    np.testing.assert_array_equal(states[1], want)  # the rest copy it
    assert not np.array_equal(real_encoder.encode(["a blue square"])[0], want)  # where the real one differs
