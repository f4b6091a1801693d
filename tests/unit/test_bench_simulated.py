"""The simulated denoisers (``bench.simulated``) and the pure parts of figures 7 and 8
(``bench.ceiling``, ``bench.report``). No wall-clock assertions: sleeps are recorded, not timed."""

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
    SimulatedDevice,
    calls_between,
    command_calls,
    jobs_finished,
    ping_per_job,
    script_calls,
    span,
)
from bench.report import Results, render
from bench.simulated import H200_CURVE, OUTPUT_SCALE, LatencyCurve, SimulatedEngine, simulated
from diffq.jobs import Job, JobRequest, Status
from model_store.store import ModelStore
from workers.calibration import GPU_SIZES, SIZES, measure_curve, sizes_for
from workers.engine import Engine, EngineOptions


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
