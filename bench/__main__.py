"""``python -m bench [--quick] [--out BENCHMARKS.md]``: run every benchmark, write the report."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.ceiling import END_TO_END_CLIENTS, measure_ceiling, measure_pipeline_ceiling, measure_simulated
from bench.client import Api
from bench.engine import curve_sizes, load_engine, measure_curve
from bench.eta import measure_eta
from bench.gateway import measure_gateway
from bench.latency import measure_latency
from bench.machine import CpuSample, cpu_sample, describe, outside_share
from bench.overhead import measure_overhead
from bench.report import Results, Step, write_report
from bench.service import measure_service
from bench.stack import BenchStack, batching_modes
from bench.stages import build_tiny_store, measure_stages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer sizes, jobs and seconds (under 2 minutes)")
    p.add_argument(
        "--out", type=Path, default=Path("BENCHMARKS.md"), help="the report (default BENCHMARKS.md)"
    )
    p.add_argument("--plots", type=Path, default=Path("docs/bench"), help="where the PNGs go")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="onnxruntime threads")
    p.add_argument(
        "--max-batch-rows",
        type=int,
        default=None,
        help="the worker's rows per call (default: the worker's tick rule on the engine curve "
        "measured first; "
        "0: the worker measures its own at start-up)",
    )
    p.add_argument(
        "--backlog-rows",
        type=int,
        default=None,
        help="the worker's rows per call under a backlog (default: the worker's rule, best_rows, on "
        "the engine curve; 0 with --max-batch-rows 0: measured by the worker)",
    )
    p.add_argument("--gateway-processes", type=int, default=1, help="uvicorn processes of both servers")
    p.add_argument("--concurrency", type=int, default=16, help="connections in the gateway benchmark")
    p.add_argument(
        "--curve-seconds",
        type=float,
        default=None,
        help="timed seconds per batch size and round in the engine curve (default 1, quick 0.25)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    results = Results(
        command=" ".join(["python -m bench", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        quick=quick,
        machine=describe(),
    )
    began = time.monotonic()
    current: list[tuple[str, CpuSample]] = []

    def step(name: str | None) -> None:
        """Close the step under way (its time and outside load), then start ``name``."""
        now = cpu_sample()
        if current:
            was, since = current.pop()
            results.steps.append(Step(was, now.at - since.at, outside_share(since, now)))
            # A partial report after every step: a run cut short still leaves what it measured.
            results.seconds = time.monotonic() - began
            write_report(results, args.out, args.plots)
        if name is not None:
            log(f"{name} ({time.monotonic() - began:.0f}s in)")
            current.append((name, now))

    engine, variant = load_engine(args.threads)
    step("engine curve")
    results.engine = measure_curve(
        engine,
        variant,
        args.threads,
        curve_sizes(engine.device, quick),
        seconds_per_size=args.curve_seconds or (0.25 if quick else 1.0),
        rounds=2 if quick else 3,
    )
    if args.max_batch_rows is None:
        rows, source = results.engine.tick_rows_rule, "the worker's rule on the engine curve"
    elif args.max_batch_rows == 0:
        rows, source = None, "measured by the worker at start-up"
    else:
        rows, source = args.max_batch_rows, "--max-batch-rows"
    backlog = args.backlog_rows
    if backlog is None and rows is not None:
        backlog = results.engine.best_rows_rule
    stack = BenchStack(args.threads, rows, args.gateway_processes, backlog or None)
    api: Api | None = None
    try:
        step("starting the stack")
        stack.start_gateway()
        stack.start_worker("continuous")
        api = Api(stack.base_url)
        results.worker = {
            "max_batch_rows": stack.tick_rows,
            "max_batch_rows_from": source,
            "backlog_rows": stack.backlog_rows,
            "max_wait_ms": stack.max_wait_ms,
            "intra_op_threads": args.threads,
            "gateway_processes": args.gateway_processes,
        }
        step("unloaded overhead")
        results.overhead = measure_overhead(stack, engine, repetitions=5 if quick else 20)
        step("service efficiency")
        results.service = measure_service(
            stack, api, engine, min_images=64 if quick else 384, best=results.engine.best
        )
        step("latency under load")
        results.latency = measure_latency(
            stack,
            api,
            batching_modes(),
            capacity_jobs=24 if quick else 150,
            capacity_batches=3 if quick else 8,
            jobs_per_load=12 if quick else 200,
            seed=args.seed,
        )
        step("ETA accuracy")
        results.eta = measure_eta(
            stack, api, results.latency.reference_capacity, jobs=24 if quick else 200, seed=args.seed
        )
        step("gateway throughput")
        results.gateway = measure_gateway(
            stack, args.concurrency, seconds=2 if quick else 8, rounds=1 if quick else 2
        )
    finally:
        if api is not None:
            api.close()
        stack.close()
    # A fresh stack: the gateway rounds left thousands of jobs queued in the first one.
    step("zero-cost ceiling")
    sim = BenchStack(args.threads, stack.tick_rows, args.gateway_processes)
    try:
        sim.start_gateway()
        results.ceiling = measure_ceiling(
            sim, jobs=500 if quick else 3000, clients=END_TO_END_CLIENTS, seconds=2 if quick else 8
        )
        step("simulated device")
        results.simulated = measure_simulated(
            sim, jobs=800 if quick else 6000, drain_jobs=800 if quick else 3000
        )
    finally:
        sim.close()
    step("pipeline stages")
    try:
        with tempfile.TemporaryDirectory(prefix="diffq-bench-tiny-sd-") as tmp:
            began_build = time.perf_counter()
            stored = build_tiny_store(Path(tmp), args.seed)
            built = (stored, time.perf_counter() - began_build)
            results.stages = measure_stages(args.threads, quick, args.seed, built=built)
            step("tiny SD zero-cost ceiling")
            results.pipeline_ceiling = measure_pipeline_ceiling(
                args.threads, args.gateway_processes, Path(tmp) / "store", stored.manifest.name,
                jobs=300 if quick else 2000,
            )  # fmt: skip
    except ModuleNotFoundError as e:  # building the pipeline needs the tooling (the train extra)
        results.stages_missing = f"building the tiny SD pipeline needs {e.name} (`make test` installs it)"
        log(results.stages_missing)
    step(None)
    results.seconds = time.monotonic() - began
    write_report(results, args.out, args.plots)
    log(f"wrote {args.out} and {args.plots}/ in {results.seconds:.0f}s")
    return 0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
