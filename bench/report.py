"""The benchmark report: ``BENCHMARKS.md``, its plots and the raw figures as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.ceiling import Ceiling, Drain, PipelineDrain, SimulatedDevice
from bench.engine import EngineCurve
from bench.eta import LOAD, EtaAccuracy
from bench.gateway import GatewayThroughput
from bench.inprocess import QUIET_SECONDS, REST
from bench.latency import LOADS, LatencyUnderLoad
from bench.overhead import Overhead
from bench.service import EngineTime, ServiceEfficiency
from bench.stages import PipelineStages, denoiser_share
from bench.stats import format_ratio, ratio, verdict

TARGETS = {"service": 0.95, "p99": 0.6, "capacity": 1.0, "overhead_ms": 10.0, "gateway": 0.7}
TARGETS |= {"ping_per_job": 2.0, "simulated": 0.9}  # issue 14: throughput at saturation


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    outside_share: float  # of the machine's CPU time, used by processes not ours meanwhile


@dataclass
class Results:
    command: str
    quick: bool
    machine: dict[str, str]
    date: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    seconds: float = 0.0
    steps: list[Step] = field(default_factory=list)
    worker: dict[str, Any] = field(default_factory=dict)
    engine: EngineCurve | None = None
    service: ServiceEfficiency | None = None
    latency: LatencyUnderLoad | None = None
    overhead: Overhead | None = None
    gateway: GatewayThroughput | None = None
    stages: PipelineStages | None = None
    stages_missing: str = ""  # why the pipeline stages were not measured
    ceiling: Ceiling | None = None  # 7: the worker around a zero-cost denoiser
    simulated: SimulatedDevice | None = None  # 8: the worker around the H200 curve
    pipeline_ceiling: PipelineDrain | None = None  # 9: the tiny SD pipeline on free stages
    eta: EtaAccuracy | None = None  # 10: ETAs against what happened


def write_report(results: Results, out: Path, plots: Path) -> None:
    plots.mkdir(parents=True, exist_ok=True)
    images = {}
    if results.engine:
        images["engine"] = plot_engine(results.engine, plots / "engine_curve.png")
    if results.latency:
        images["latency"] = plot_latency(results.latency, plots / "latency_vs_load.png")
    if results.stages:
        images["stages"] = plot_stages(results.stages, plots / "stage_curves.png")
    rel = {k: os.path.relpath(v, out.resolve().parent) for k, v in images.items()}
    out.write_text(render(results, rel))
    (plots / "results.json").write_text(json.dumps(_plain(results), indent=2) + "\n")


# ---- markdown ---------------------------------------------------------------------------
def render(r: Results, images: dict[str, str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured on {r.date} by `{r.command}` in {r.seconds:.0f} s "
        f"({'quick' if r.quick else 'full'} mode). "
        "Every figure is a ratio of two things measured side by side in this one run on this one "
        "machine; they move with the machine, so compare runs on the same hardware only.",
        "",
    ]
    if r.quick:
        lines += [
            "> Quick mode: few samples per figure (a p99 over "
            f"{r.latency.jobs_per_load if r.latency else 'a few'} jobs is close to their maximum). "
            "Use it to check that the benchmarks run, not to judge the figures.",
            "",
        ]
    lines += _summary(r) + _machine(r) + _engine(r, images) + _service(r) + _latency(r, images)
    lines += (
        _overhead(r)
        + _gateway(r)
        + _stages(r, images)
        + _ceiling(r)
        + _simulated(r)
        + _pipeline_ceiling(r)
        + _eta(r)
        + _reproduce()
    )
    return "\n".join(lines)


def _summary(r: Results) -> list[str]:
    rows = []
    if r.engine:
        size, best = r.engine.best
        rows.append(
            (
                "1. engine knee",
                f"{r.engine.knee} rows (95% of the best, {best:.0f} rows/s at {size})",
                "-",
                "-",
            )
        )
    if r.service:
        e = r.service.efficiency
        rows.append(
            ("2. service at saturation / raw engine best", f"{e:.2f}x", ">= 0.95x", _v(e, "service", True))
        )
    if r.latency:
        p, c = r.latency.p99_ratio(0.8), r.latency.capacity_ratio()
        rows.append(("3. p99 at 80% load, continuous / request", _x(p), "<= 0.60x", _v(p, "p99", False)))
        rows.append(("3. capacity, continuous / request", _x(c), ">= 1.00x", _v(c, "capacity", True)))
    if r.overhead:
        o = r.overhead.overhead_ms
        rows.append(("4. unloaded overhead per job", f"{o:.1f} ms", "< 10 ms", _v(o, "overhead_ms", False)))
    if r.gateway:
        g = r.gateway.efficiency
        rows.append(
            ("5. gateway / bare submissions per second", f"{g:.2f}x", ">= 0.70x", _v(g, "gateway", True))
        )
    if r.stages:
        rows.append(
            (
                "6. tiny SD: worker time in denoiser calls",
                f"{denoiser_share(r.stages):.0%} (text encoding, decoding, PNGs: see 6)",
                "-",
                "-",
            )
        )
    rows += _simulated_summary(r)
    if r.eta:
        for point in r.eta.points:
            rows.append(
                (
                    f"10. ETA median error, {point.name}",
                    f"finish {point.finish_median_s:.2f} s ({point.finish_median_relative:.0%} of the wait), "
                    f"start {point.start_median_s:.2f} s",
                    "-",
                    "-",
                )
            )
    out = ["## Summary", "", "| figure | measured | target | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return [*out, ""]


def _machine(r: Results) -> list[str]:
    out = ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r.machine.items()]
    w = r.worker
    if w:
        out.append(
            f"| stack | 1 gateway ({w['gateway_processes']} uvicorn process), 1 worker: "
            f"{w['max_batch_rows']} rows per call ({w['max_batch_rows_from']}), "
            f"{w['max_wait_ms']} ms gathering (request-level batching only), "
            f"{w['intra_op_threads']} onnxruntime threads; embedded Valkey with `appendfsync always` |"
        )
    out += [
        "",
        "The machine was shared while this ran. Share of its CPU time that other processes used "
        "during each step (a busy step slows whichever side of a ratio it lands on):",
        "",
        "| step | seconds | CPU used by others |",
        "|---|---:|---:|",
    ]
    out += [f"| {s.name} | {s.seconds:.0f} | {s.outside_share:.0%} |" for s in r.steps]
    out.append("")
    return out


def _engine(r: Results, images: dict[str, str]) -> list[str]:
    e = r.engine
    if e is None:
        return []
    out = [
        "## 1. Engine curve",
        "",
        f"Denoiser rows per second against rows per call: raw onnxruntime through `workers.engine.Engine` "
        f"(model variant {e.variant}, {', '.join(e.providers)}, {e.threads} intra-op threads), random "
        f"inputs, best of the rounds. "
        f"The knee, the smallest batch reaching 95% of the best throughput, is **{e.knee} rows**; "
        f"the worker's own start-up rule (`workers.batching.tick_rows`: the smallest batch no "
        f"bigger one beats by over 10%) takes {e.tick_rows_rule} rows from it, and the stack "
        f"below runs with that.",
        "",
        "| rows per call | rows/s | ms per call |",
        "|---:|---:|---:|",
    ]
    out += [
        f"| {s} | {e.rows_per_second[s]:.0f} | {e.ms_per_call[s]:.1f} |" for s in sorted(e.rows_per_second)
    ]
    if "engine" in images:
        out += ["", f"![engine curve]({images['engine']})"]
    return [*out, ""]


def _service(r: Results) -> list[str]:
    s = r.service
    if s is None:
        return []
    return [
        "## 2. Service at saturation",
        "",
        f"{s.images} one-image jobs ({s.sampler}, {s.steps} steps, guidance {s.guidance_scale}: two rows "
        "per image), submitted over HTTP by 4 client threads as fast as they go, one worker "
        f"(adaptive batching: {s.max_batch_rows} rows per call at light load, {s.backlog_rows} under a "
        "backlog). Saturated is the window from the first job's start to the last one's, when jobs "
        "still waited in the queue: the rows computed in it (each job's rows spread evenly over its "
        "run, by the worker's clock) over its length. They are set against the raw engine's best "
        f"throughput in figure 1, {s.engine_best_rows_per_second:.0f} rows/s at {s.engine_best_size} rows "
        "per call. The in-process side runs the same jobs through the worker's scheduler and "
        "`sampling.denoise` (`start_row`, `denoise_step`, `to_uint8`, PNG encoding with the worker's "
        f"encoder) at {s.backlog_rows} rows per call; it leaves out HTTP, Redis and every status and "
        "progress write.",
        "",
        "| | seconds | rows/s | images/s | in denoiser calls | calls | rows per call |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| service, saturated window | {s.saturated_seconds:.2f} | "
        f"{s.saturated_rows_per_second:.0f} | | | | |",
        f"| service, first submit to last success | {s.service_seconds:.2f} | | "
        f"{s.service_images_per_second:.1f} | " + _engine_time(s.service_engine, s.service_seconds),
        f"| in-process | {s.inprocess_seconds:.2f} | {s.inprocess_rows_per_second:.0f} | "
        f"{s.inprocess_images_per_second:.1f} | " + _engine_time(s.inprocess_engine, s.inprocess_seconds),
        f"| raw engine, best of figure 1 | | {s.engine_best_rows_per_second:.0f} | | | | "
        f"{s.engine_best_size} |",
        "",
        "Denoiser time, calls and rows are the engine's own counts (the worker's from its "
        "`/metrics`); the rest of the wall time is everything around the calls. In-process / raw "
        f"engine: {format_ratio(s.host_efficiency)} (the sampler's math and the PNGs, which the service "
        "pays too).",
        "",
        f"Saturated service / raw engine best: **{format_ratio(s.efficiency, TARGETS['service'])}**"
        + (f"; {s.failed} jobs did not succeed." if s.failed else "."),
        "",
    ]


def _latency(r: Results, images: dict[str, str]) -> list[str]:
    lat = r.latency
    if lat is None:
        return []
    out = [
        "## 3. Latency under load",
        "",
        "One-image jobs, samplers drawn from dpmpp_2m, ddim, euler_ancestral and ddpm, steps uniform "
        "in 4..50, guidance 1.5. Capacity: a burst of "
        f"{lat.capacity_jobs} such jobs per batching mode (`DIFFQ_BATCHING`, a fresh worker each), first "
        f"submit to last success. The loads are fractions of the smaller capacity, "
        f"**{lat.reference_capacity:.2f} jobs/s**, offered open-loop as Poisson arrivals "
        f"({lat.jobs_per_load} jobs per load, the same jobs and arrival times for both modes). "
        "Latency is each job's `timings.total_ms`: accepted by the gateway to succeeded.",
        "",
        "| mode | capacity jobs/s | denoiser rows/s |",
        "|---|---:|---:|",
    ]
    for m in lat.modes.values():
        out.append(
            f"| {m.mode} | {m.capacity_jobs_per_second:.2f} | {m.capacity_evaluations_per_second:.0f} |"
        )
    out += [
        "",
        "| mode | load | offered jobs/s | of own capacity | p50 ms | p95 ms | p99 ms | not succeeded "
        "| worst submit lag ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in lat.modes.values():
        for p in m.points:
            own = (
                p.offered_per_second / m.capacity_jobs_per_second if m.capacity_jobs_per_second else math.nan
            )
            out.append(
                f"| {m.mode} | {p.load:.0%} | {p.offered_per_second:.2f} | {own:.0%} | {p.p50_ms:.0f} | "
                f"{p.p95_ms:.0f} | {p.p99_ms:.0f} | {p.failed} | {p.max_submit_lag_ms:.1f} |"
            )
    out += [
        "",
        "p99 at 80% load, continuous / request: "
        f"**{format_ratio(lat.p99_ratio(0.8), TARGETS['p99'], False)}**; "
        f"capacity, continuous / request: **{format_ratio(lat.capacity_ratio(), TARGETS['capacity'])}**.",
    ]
    if lat.missing:
        out += ["", f"Not measured: {lat.missing}."]
    if "latency" in images:
        out += ["", f"![latency against load]({images['latency']})"]
    return [*out, ""]


def _overhead(r: Results) -> list[str]:
    o = r.overhead
    if o is None:
        return []
    waiting = (
        "`Prefer: wait` on the `POST` itself (one request: the gateway answers when the job ends)"
        if o.prefer_wait
        else "polling `GET /v1/jobs/{id}` every 2 ms (the gateway has no `Prefer: wait`)"
    )
    j = o.job
    return [
        "## 4. Unloaded overhead",
        "",
        f"One job ({j.sampler}, {j.steps} steps, guidance {j.guidance_scale}, one image) on an idle stack, "
        f"{o.repetitions} times after two warm-ups. End to end: client clock from before the `POST` to the "
        f"answer saying `succeeded`, waiting with {waiting}. In-process: the same request through "
        f"`bench.inprocess` (PNG included), right after each; each side after a {QUIET_SECONDS} s "
        "pause, as onnxruntime's threads spin on after a call. Overhead: median of the paired "
        "differences.",
        "",
        "| | median ms |",
        "|---|---:|",
        f"| end to end | {o.end_to_end_ms:.1f} |",
        f"| in-process | {o.inprocess_ms:.1f} |",
        f"| overhead | **{o.overhead_ms:.1f}** "
        f"({verdict(o.overhead_ms, TARGETS['overhead_ms'], False)}: < 10 ms) |",
        f"| job's `queue_ms` (accepted to started) | {o.queue_ms:.1f} |",
        f"| job's `run_ms` (started to succeeded) | {o.run_ms:.1f} |",
        "",
    ]


def _gateway(r: Results) -> list[str]:
    g = r.gateway
    if g is None:
        return []
    out = [
        "## 5. Gateway submissions",
        "",
        f"`POST /v1/jobs` answered with 202 per second, {g.concurrency} keep-alive connections in closed "
        f"loop, {g.processes} uvicorn process(es) each, no worker consuming, {g.rounds} round(s) "
        f"alternating, {g.gateway.seconds / g.rounds:.0f} s each. The gateway (auth off, limits out of "
        "the way, logs at INFO) against a bare FastAPI route doing one `XADD` on the same Valkey.",
        "",
        "| server | accepted/s | first third | last third | other answers |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in (("gateway", g.gateway), ("bare endpoint", g.bare)):
        out.append(
            f"| {name} | {t.per_second:.0f} | {t.first_third_per_second:.0f} | "
            f"{t.last_third_per_second:.0f} | {t.rejected} |"
        )
    out += [
        "",
        f"Ratio: **{format_ratio(g.efficiency, TARGETS['gateway'])}**. {g.queued_after} jobs were left "
        "queued by the gateway's rounds.",
    ]
    t = g.gateway
    if t.last_third_per_second < 0.8 * t.first_third_per_second:
        out[-1] += (
            " Its rate fell as that backlog grew (first against last third of each round): the "
            "queue position it reports for each new job costs more the more jobs wait."
        )
    return [*out, ""]


def _stages(r: Results, images: dict[str, str]) -> list[str]:
    if r.stages is None:
        if not r.stages_missing:
            return []
        return ["## 6. Pipeline stages (tiny SD)", "", f"Not measured: {r.stages_missing}.", ""]
    out = render_stages(r.stages)
    if "stages" in images:
        out += [f"![stage curves]({images['stages']})", ""]
    return out


def render_stages(p: PipelineStages) -> list[str]:
    """Section 6: each stage's engine curve, and the worker's time per stage on a text mix."""
    out = [
        "## 6. Pipeline stages (tiny SD)",
        "",
        f"An imported text-to-image pipeline, built and imported by the run itself ({p.model}), "
        "loaded as a worker loads it (`workers.engine.Engine`, `workers.main.load_stages`; "
        f"{', '.join(p.providers)}, {p.threads} intra-op threads); building, exporting, checking and "
        f"loading took {p.build_seconds:.1f} s. The figures are for this tiny model, whose stages "
        "are all small: they show the stages' relative costs and the worker's overheads around "
        "them, not those of a full-size SD.",
        "",
        "Engine curve per stage: rows per second against rows per call, random inputs (real token "
        "ids for the text encoder), on each stage's own call clock (the onnxruntime call alone), "
        "best of the rounds.",
        "",
    ]
    for c in p.curves:
        out += [
            f"**{c.stage}** (a row: {c.row}; knee {c.knee} rows)",
            "",
            "| rows per call | rows/s | ms per call |",
            "|---:|---:|---:|",
        ]
        out += [
            f"| {s} | {c.rows_per_second[s]:.0f} | {c.ms_per_call[s]:.2f} |"
            for s in sorted(c.rows_per_second)
        ]
        out.append("")
    out += [
        f"Where a worker's time goes: {p.jobs} guided text jobs (`bench.workload.text_mix`: 1-2 images, "
        "8-20 steps, guidance 7.5, samplers mixed, prompts drawn from a few with repeats, a negative "
        "prompt on about one in three, each size equally likely) run in-process through the worker's "
        "scheduler and stages "
        f"(`bench.inprocess.run_jobs`), {p.max_batch_rows} rows per call (the worker's start-up rule, "
        "`workers.batching.tick_rows`, on the denoiser curve above), a fresh embedding cache; "
        f"{p.images} images, {p.evaluations} denoiser rows, {p.seconds:.2f} s "
        f"({p.images_per_second:.1f} images/s), the fastest of {p.runs} run(s). "
        "Seconds by the loop's clock around each stage; ONNX calls, rows and seconds are the "
        "stage's own counts.",
        "",
        "| stage | seconds | share | ONNX calls | rows per call | in ONNX |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for sh in p.shares:
        calls = (
            f"{sh.calls} | {sh.rows / sh.calls:.1f} | {sh.onnx_seconds:.3f} s" if sh.calls else "- | - | -"
        )
        out.append(f"| {sh.name} | {sh.seconds:.3f} | {sh.share:.0%} | {calls} |")
    out += [
        "",
        "Text encoding is tokenizing, the embedding cache and the encoder calls; sampler math is "
        "batch assembly, guidance and the per-row updates around the denoiser calls; decoding is "
        "the VAE decoder's calls with the scaling and 8-bit conversion; "
        f"{REST} is scheduling, plans and initial noise. No HTTP, Redis or status writes: a real "
        "worker adds those.",
        "",
    ]
    return out


def _simulated_summary(r: Results) -> list[tuple[str, str, str, str]]:
    rows = []
    if r.ceiling:
        d, e = r.ceiling.drain, r.ceiling.end_to_end
        p = d.ping_per_job
        rows.append(
            (
                "7. zero-cost worker: drain cost per job in PING round trips",
                f"{p:.1f} ({d.jobs_per_second:.0f} jobs/s)",
                "<= 2",
                _v(p, "ping_per_job", False),
            )
        )
        rows.append(
            ("7. zero-cost worker, end to end over HTTP", f"{e.jobs_per_second:.0f} jobs/s", "-", "-")
        )
    if r.simulated:
        f = r.simulated.efficiency
        rows.append(
            ("8. simulated H200: service / engine best rows/s", _x(f), ">= 0.90x", _v(f, "simulated", True))
        )
    if (pipe := r.pipeline_ceiling) is not None:
        versus = f"{_x(pipeline_ratio(r))} of 7's" if r.ceiling else "7 not measured"
        rows.append(
            (
                "9. tiny SD on free stages: zero-cost drain",
                f"{pipe.jobs_per_second:.0f} jobs/s ({versus})",
                "-",
                "-",
            )
        )
    return rows


def pipeline_ratio(r: Results) -> float:
    """Figure 9's jobs per second against figure 7's (jobs of the same shape, the same worker)."""
    if r.pipeline_ceiling is None or r.ceiling is None:
        return float("nan")
    return ratio(r.pipeline_ceiling.jobs_per_second, r.ceiling.drain.jobs_per_second)


def _drain_rows(d: Drain) -> list[str]:
    trips = "n/a" if d.round_trips_per_job is None else f"{d.round_trips_per_job:.2f}"
    sent = "n/a" if d.worker_commands_per_job is None else f"{d.worker_commands_per_job:.2f}"
    return [
        f"| jobs drained | {d.jobs - d.failed} of {d.jobs} in {d.seconds:.2f} s |",
        f"| jobs/s | **{d.jobs_per_second:.0f}** |",
        f"| image-steps/s | {d.image_steps_per_second:.0f} |",
        f"| denoiser rows/s | {d.rows_per_second:.0f} |",
        f"| worker requests to Valkey per job (a pipeline or script call is one) | {trips} |",
        f"| commands in them per job | {sent} |",
        f"| of which script calls (EVALSHA/FCALL) per job | {d.script_calls_per_job:.2f} |",
        f"| commands Valkey executed per job (scripts' own calls included) | {d.commands_per_job:.1f} |",
        f"| sequential PING round trips/s, one client (median; slowest and fastest window) | "
        f"{d.ping_per_second:.0f} ({d.ping_range[0]:.0f} to {d.ping_range[1]:.0f}) |",
        f"| drain cost per job in PING round trips | **{d.ping_per_job:.1f}** |",
        "| in denoiser calls | "
        + (
            f"{d.engine.seconds:.2f} s, {d.engine.calls} calls, "
            f"{d.engine.rows / d.engine.calls:.1f} rows per call |"
            if d.engine and d.engine.calls
            else "n/a |"
        ),
    ]


def _ceiling(r: Results) -> list[str]:
    c = r.ceiling
    if c is None:
        return []
    d, e = c.drain, c.end_to_end
    top = ", ".join(f"{name} {n / d.jobs:.1f}" for name, n in d.top_commands)
    return [
        "## 7. Zero-cost ceiling",
        "",
        "The real worker process (`workers.main.run_worker`, via `python -m bench.simulated_worker "
        "--device zero`) with a denoiser that costs nothing (`bench.simulated`: one multiply, the "
        f"model's shapes and dtype). {d.jobs} one-image jobs ({d.sampler}, {d.steps} steps, guidance "
        f"{d.guidance_scale}: {d.rows_per_job} row per image) submitted over HTTP with no worker "
        f"running, then drained by one worker with {d.max_batch_rows} rows per call; timed from the "
        "first job's `started_at` to the last one's `finished_at`. Valkey's commands are `INFO "
        "commandstats` deltas over the drain, the INFO calls, a worker's start-up "
        f"({d.startup_commands} commands, measured on an empty queue) and the idle stack's own "
        f"({d.background_commands}) left out; the worker's requests are counted on its redis-py "
        "connections. PING round trips: one redis-py client, one PING at a time, on the same "
        "Valkey, in short windows, half before the drain and half after it.",
        "",
        "| | |",
        "|---|---:|",
        *_drain_rows(d),
        "",
        f"Commands per job, the most called: {top}.",
        "",
        f"Drain cost: **{d.ping_per_job:.1f} PING round trips per job** "
        f"({verdict(d.ping_per_job, TARGETS['ping_per_job'], False)}: <= 2).",
        "",
        f"End to end: {e.clients} clients in closed loop, each submitting one such job with "
        f"`Prefer: wait` and waiting for it, {e.seconds:.0f} s: **{e.jobs_per_second:.0f} jobs/s**"
        + (f" ({e.other} answers were not a success)." if e.other else "."),
        "",
    ]


def _simulated(r: Results) -> list[str]:
    s = r.simulated
    if s is None:
        return []
    curve = ", ".join(f"{size}: {rate:,.0f}" for size, rate in sorted(s.curve.items()))
    engine = (
        f"{s.engine.seconds:.2f} s in denoiser calls ({s.engine.seconds / s.seconds:.0%} of the wall time), "
        f"{s.engine.calls} calls, {s.engine.rows / s.engine.calls:.1f} rows per call"
        if s.engine and s.engine.calls
        else "denoiser calls not exported"
    )
    out = [
        "## 8. Simulated device (H200 curve)",
        "",
        "The real worker with a denoiser that replays mnist-cfg-unet's measured H200 curve "
        "(BENCHMARKS-GPU.md, "
        f"ort CUDA fp16, CUDA graph per bucket; rows per call: rows/s {{{curve}}}): a call of B rows "
        "sleeps B / rate(B), linear in rows between measured sizes, and reports device `cuda`. "
        f"{s.max_batch_rows} rows per call (the worker's rule, `workers.batching.tick_rows`, on that curve). "
        f"{s.jobs} one-image jobs of the model's defaults ({s.sampler}, {s.steps} steps, guidance "
        f"{s.guidance_scale}: {s.rows_per_job} rows per image) submitted over HTTP by 4 client threads "
        f"while the worker runs, first submit to last `finished_at`; they arrived at "
        f"{s.submitted_per_second:,.0f} jobs/s "
        f"({s.submitted_per_second * s.steps * s.rows_per_job:,.0f} rows/s of work), which bounds what "
        "the service can deliver here: the drain below shows the worker alone.",
        "",
        f"Service: {s.jobs - s.failed} jobs in {s.seconds:.2f} s, **{s.rows_per_second:,.0f} rows/s** "
        f"({s.image_steps_per_second:,.0f} image-steps/s); {engine}. Against the simulated engine's best, "
        f"{s.best_rows_per_second:,.0f} rows/s: **{format_ratio(s.efficiency, TARGETS['simulated'])}**.",
        "",
    ]
    if s.drain is not None:
        d = s.drain
        out += [
            f"The same worker alone, draining {d.jobs} such jobs prefilled over HTTP (as in 7): "
            f"{d.rows_per_second / s.best_rows_per_second:.2f}x of the engine's best.",
            "",
            "| | |",
            "|---|---:|",
            *_drain_rows(d),
            "",
        ]
    return out


def _pipeline_ceiling(r: Results) -> list[str]:
    p = r.pipeline_ceiling
    if p is None:
        return []
    engine = (
        f"{p.engine.seconds:.2f} s in {p.engine.calls} denoiser calls "
        f"({p.engine.rows / p.engine.calls:.1f} rows per call)"
        if p.engine and p.engine.calls
        else "denoiser calls not exported"
    )
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in sorted(p.stage_seconds.items()))
    out = [
        "## 9. Tiny SD pipeline on free stages",
        "",
        f"Figure 7's drain for a text-to-image model: `{p.model}` (the tiny SD pipeline of 6) served by "
        "a stack of its own, and one worker on the zero-cost device, where the text encoder and the VAE "
        "decoder cost nothing either (`bench.simulated.SimulatedComponent`: the real component's output "
        "for the first row of each input shape, copied), sizing its batches from its own curve "
        f"({p.max_batch_rows} rows per call). {p.jobs} one-image jobs of 7's shape ({p.sampler}, {p.steps} "
        f"steps, guidance {p.guidance_scale}), each with a prompt of its own, so every job is tokenized "
        "and encoded; timed from the first `started_at` to the last `finished_at`.",
        "",
        "| | |",
        "|---|---:|",
        f"| jobs drained | {p.jobs - p.failed} of {p.jobs} in {p.seconds:.2f} s |",
        f"| jobs/s | **{p.jobs_per_second:.0f}** |",
        f"| image-steps/s | {p.image_steps_per_second:.0f} |",
        f"| in the free calls | {engine}; {stages or 'stage calls not exported'} |",
    ]
    if r.ceiling is not None:
        out.append(
            f"| against 7's drain ({r.ceiling.drain.jobs_per_second:.0f} jobs/s) | {_x(pipeline_ratio(r))} |"
        )
    out += [
        "",
        "The ratio to 7 is what the worker's host work around the two extra stages costs per job: "
        "tokenizing, the embedding cache, the latents' scaling, the 8-bit conversion of the "
        "decoder's output and the larger PNGs (both drains move by 10-15% between runs here).",
        "",
    ]
    return out


def _eta(r: Results) -> list[str]:
    e = r.eta
    if e is None:
        return []
    out = [
        "## 10. ETAs",
        "",
        "Each job's estimate as its submission was answered (`timings.estimated_start_at`, "
        "`estimated_finish_at`: the work queued ahead at the worker's measured pace, then its steps "
        "at the measured step time) against its `started_at` and `finished_at`. Figure 3's job mix, "
        f"as one burst, then as Poisson arrivals at {LOAD:.0%} of figure 3's reference capacity. "
        "Errors are absolute; relative is over the job's actual submission-to-finish time.",
        "",
        "| run | jobs | with an estimate | median wait s | start error median / p90 s "
        "| finish error median / p90 s | finish error median, relative |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    out += [
        f"| {p.name} | {p.jobs} | {p.estimated} | {p.median_wait_s:.2f} | {p.start_median_s:.2f} / "
        f"{p.start_p90_s:.2f} | {p.finish_median_s:.2f} / {p.finish_p90_s:.2f} | "
        f"{p.finish_median_relative:.0%} |"
        for p in e.points
    ]
    return [*out, ""]


def _reproduce() -> list[str]:
    return [
        "## Reproducing",
        "",
        "`make bench` (several minutes; all figures with more samples) or `make bench QUICK=1` "
        "(under 2 minutes; a smoke run); `ARGS=...` passes options "
        "(`python -m bench --help`). Raw figures: `docs/bench/results.json`. Run it on an otherwise "
        "idle machine for figures worth comparing.",
        "",
    ]


def _engine_time(t: EngineTime | None, wall: float) -> str:
    if t is None or not t.calls:
        return "n/a | n/a | n/a |"
    return f"{t.seconds:.2f} s ({t.seconds / wall:.0%}) | {t.calls} | {t.rows / t.calls:.1f} |"


def _v(value: float, target: str, higher_is_better: bool) -> str:
    return verdict(value, TARGETS[target], higher_is_better)


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


# ---- plots ------------------------------------------------------------------------------
def plot_engine(e: EngineCurve, path: Path) -> Path:
    sizes = sorted(e.rows_per_second)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(sizes, [e.rows_per_second[s] for s in sizes], "o-", label="rows/s")
    _, best = e.best
    ax.axhline(0.95 * best, color="grey", linestyle=":", label="95% of best")
    ax.axvline(e.knee, color="tab:red", linestyle="--", label=f"knee: {e.knee} rows")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_xlabel("rows per denoiser call")
    ax.set_ylabel("rows per second")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Denoiser throughput ({e.threads} threads)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_stages(p: PipelineStages, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for c in p.curves:
        sizes = sorted(c.rows_per_second)
        ax.plot(sizes, [c.rows_per_second[s] for s in sizes], "o-", label=c.stage)
    sizes = sorted({s for c in p.curves for s in c.rows_per_second})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_xlabel("rows per call")
    ax.set_ylabel("rows per second")
    ax.set_title(f"Tiny SD stages ({p.threads} threads)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_latency(lat: LatencyUnderLoad, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors = {"continuous": "tab:blue", "request": "tab:orange"}
    for m in lat.modes.values():
        loads = [p.load * 100 for p in m.points]
        for attr, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
            ax.plot(
                loads,
                [getattr(p, attr) for p in m.points],
                style,
                marker="o",
                color=colors.get(m.mode),
                label=f"{m.mode} {attr.split('_')[0]}",
            )
    ax.set_xticks([load * 100 for load in LOADS])
    ax.set_xlabel(f"offered load, % of {lat.reference_capacity:.2f} jobs/s")
    ax.set_ylabel("latency, ms (accepted to succeeded)")
    ax.set_ylim(bottom=0)
    ax.set_title("Latency against load: p50 dotted, p95 dashed, p99 solid")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


# ---- helpers ----------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Results as JSON-ready values (dataclasses to dicts, NaN to null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
