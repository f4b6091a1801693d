"""``python -m bench.gpu``: the GPU engine matrix for the shipped model, on a CUDA machine.

For each model variant (fp32, fp16) and each way ``workers.engine.Engine`` can call the
denoiser (plain ``session.run``, IOBinding, CUDA graphs over batch buckets), rows per second
at each batch size, numpy in and numpy out as the worker calls it. Beside them, the same
architecture in PyTorch (random weights: speed does not depend on them), fp16 under autocast,
eager and replayed from a CUDA graph, timed on the device alone like the anchor benchmark in
``../shared/device``; the ratio of our best engine to that is the figure the issue asks about.

Two checks ride along, since they decide what the service may promise on a GPU:

- agreement: each CUDA engine against the fp32 CPU engine (max relative error);
- batch invariance: the rows of a small batch computed alone and inside bigger batches,
  compared bit for bit. The seed contract (byte-identical images alone or in any mix) needs
  the denoiser's rows to be independent of their neighbours and of the batch size.

Writes ``gpu_engine.json`` and ``gpu_engine.md`` into ``--out``. Without CUDA it runs the CPU
rows only (that is how it is tested here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from bench.engine import MODEL
from bench.inprocess import run_jobs
from bench.workload import uniform_jobs
from model_store.store import ModelStore, StoredModel
from workers.buckets import check_buckets
from workers.engine import CPU, CUDA, Engine, EngineOptions

SIZES = (1, 8, 64, 256, 1024, 2048)
INVARIANCE_SIZES = (1, 3, 64, 300)  # 1: alone; 3 is odd; 300 is no power of two


@dataclass(frozen=True)
class Mode:
    name: str
    variant: str
    io_binding: bool = True
    cuda_graph: bool = False
    padded: bool = True  # calls padded to the buckets (the CUDA default)
    search: str = "HEURISTIC"  # cuDNN convolution algorithm search
    fixed: int | None = None  # one bucket of this size instead of the powers of two

    def options(self, cuda: bool, sizes: Sequence[int]) -> EngineOptions:
        buckets = (self.fixed,) if self.fixed else sorted({*sizes, *INVARIANCE_SIZES[:-1]})
        return EngineOptions(
            providers=(CUDA,) if cuda else (CPU,),
            io_binding=self.io_binding,
            cuda_graph=self.cuda_graph,
            pad_to_buckets=self.padded,
            buckets=check_buckets(buckets),
            cudnn_conv_algo_search=self.search,  # type: ignore[arg-type]
        )


def full_matrix(variants: Sequence[str]) -> list[Mode]:
    """Every variant in every way of calling, as the worker runs them by default otherwise."""
    return [
        mode
        for v in variants
        for mode in (
            Mode(f"{v}-plain", v, io_binding=False, padded=False),
            Mode(f"{v}-iobinding", v),
            Mode(f"{v}-cuda-graph", v, cuda_graph=True),
        )
    ]


def diagnosis_matrix() -> list[Mode]:
    """fp16 as the worker runs it (IOBinding, padded, heuristic search), against exhaustive
    search without padding (onnxruntime's default), CUDA graphs, and one fixed bucket."""
    return [
        Mode("fp16-iobinding", "fp16"),
        Mode("fp16-iobinding-exhaustive-unpadded", "fp16", padded=False, search="EXHAUSTIVE"),
        Mode("fp16-cuda-graph", "fp16", cuda_graph=True),
        Mode("fp16-fixed-1024", "fp16", fixed=1024),
    ]


@dataclass
class Row:
    engine: str  # e.g. "ort-cuda-fp16-cuda-graph", "torch-fp16-cuda-graph"
    rows_per_second: dict[int, float] = field(default_factory=dict)
    max_relative_error: float | None = None  # against the fp32 CPU engine
    batch_invariant: bool | None = None
    invariance_max_abs_diff: float | None = None
    seconds_to_build: float | None = None
    # Engine milliseconds per call: the same arrays again (as the curve), fresh arrays each
    # call, and real sampling (bench.inprocess.run_jobs: 512 guided jobs, 1024 rows per call).
    ms_per_call_same_inputs: float | None = None
    ms_per_call_fresh_inputs: float | None = None
    ms_per_call_sampling: float | None = None
    error: str | None = None


def inputs(stored: StoredModel, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = stored.manifest
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((size, *m.image_shape), dtype=np.float32),
        (rng.random(size) * (m.schedule.num_train_timesteps - 1)).astype(np.float32),
        rng.integers(0, m.unconditional_class + 1, size).astype(np.int64),
    )


def rate(call: Callable[[], object], size: int, seconds: float, sync: Callable[[], None]) -> float:
    """Rows per second: two warm-up calls, then calls until ``seconds`` have passed."""
    for _ in range(2):
        call()
    sync()
    calls, started = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - started < seconds:
        call()
        calls += 1
    sync()
    return calls * size / (time.perf_counter() - started)


def invariance(run: Callable[..., np.ndarray], stored: StoredModel) -> tuple[bool, float]:
    """Three rows computed alone (the first one) and inside batches of every size in
    INVARIANCE_SIZES, at the front and, where they fit, in the middle of the batch (in a
    worker a job's rows land wherever the other jobs leave room): bit-equal everywhere?"""
    head = inputs(stored, 3, seed=1)
    alone = np.asarray(run(*(a[:1] for a in head)))
    outs = []
    for size in INVARIANCE_SIZES[1:]:
        rest = inputs(stored, size, seed=size)
        for at in sorted({0, max(0, (size - 3) // 2)}):
            n = min(3, size - at)
            batch = [r.copy() for r in rest]
            for b, h in zip(batch, head, strict=True):
                b[at : at + n] = h[:n]
            outs.append(np.asarray(run(*batch))[at : at + n])
    trio = next(o for o in outs if len(o) == 3)
    diffs = [float(np.abs(o[:1] - alone).max()) for o in outs]
    diffs += [float(np.abs(o - trio[: len(o)]).max()) for o in outs]
    return max(diffs) == 0.0, max(diffs)


def measure_engines(
    stored: StoredModel,
    modes: Sequence[Mode],
    sizes: Sequence[int],
    seconds: float,
    cuda: bool,
    done: Callable[[Row], None],
    sampling: bool,
) -> None:
    reference = Engine(stored.verify(), stored.manifest, EngineOptions(providers=(CPU,)))
    probe = inputs(stored, 16, seed=2)
    want = reference.run(*probe)
    for mode in modes:
        row = Row(f"ort-{'cuda' if cuda else 'cpu'}-{mode.name}")
        try:
            started = time.perf_counter()
            engine = Engine(stored.verify(mode.variant), stored.manifest, mode.options(cuda, sizes))
            row.seconds_to_build = time.perf_counter() - started
            got = engine.run(*probe)
            row.max_relative_error = float(np.abs(got - want).max() / np.abs(want).max())
            row.batch_invariant, row.invariance_max_abs_diff = invariance(engine.run, stored)
            for size in sizes:
                x = inputs(stored, size)
                call = lambda x=x, e=engine: e.run(*x)  # noqa: E731
                row.rows_per_second[size] = rate(call, size, seconds, lambda: None)
            if sampling:
                diagnose(engine, stored, row)
        except Exception as exc:  # report and go on: one failing mode must not lose the rest
            row.error = repr(exc)[:500]
        done(row)


def diagnose(engine: Engine, stored: StoredModel, row: Row, size: int = 1024) -> None:
    """Where does a call's time go with real sampling inputs, against the curve's way?"""

    def per_call(make: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]], calls: int = 8) -> float:
        arrays = [make(k) for k in range(calls)]
        engine.run(*arrays[0])
        was, n = engine.stats.seconds, engine.stats.calls
        for a in arrays:
            engine.run(*a)
        return 1000 * (engine.stats.seconds - was) / (engine.stats.calls - n)

    same = inputs(stored, size)
    row.ms_per_call_same_inputs = per_call(lambda k: same)
    row.ms_per_call_fresh_inputs = per_call(lambda k: inputs(stored, size, seed=100 + k))
    jobs = uniform_jobs(size // 2, "dpmpp_2m", 8, 1.5, seed=1000)
    was, n = engine.stats.seconds, engine.stats.calls
    run_jobs(engine, jobs, size)
    row.ms_per_call_sampling = 1000 * (engine.stats.seconds - was) / (engine.stats.calls - n)


def measure_torch(
    stored: StoredModel, sizes: Sequence[int], seconds: float, done: Callable[[Row], None]
) -> None:
    """The same architecture in PyTorch on CUDA, fp16 autocast, eager and CUDA graph; inputs and
    outputs stay on the device (the anchor benchmark's way of timing)."""
    import torch

    from tooling.training.unet import UNet, UNetConfig

    arch = {k: v for k, v in stored.manifest.architecture.items() if k != "type"}
    arch["channel_mults"] = tuple(arch["channel_mults"])  # type: ignore[arg-type]
    model = UNet(UNetConfig(**arch)).cuda().eval()  # type: ignore[arg-type]
    eager, graphed = Row("torch-fp16-eager"), Row("torch-fp16-cuda-graph")
    sync = torch.cuda.synchronize
    for size in sizes:
        x, t, c = (torch.from_numpy(a).cuda() for a in inputs(stored, size))
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            eager.rows_per_second[size] = rate(partial(model, x, t, c), size, seconds, sync)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(x, t, c)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(x, t, c)
        graphed.rows_per_second[size] = rate(graph.replay, size, seconds, sync)
        del graph
    done(eager)
    done(graphed)


def render(rows: Sequence[Row], sizes: Sequence[int], device: str) -> str:
    head = "| engine | " + " | ".join(f"b={s}" for s in sizes) + " | rel. error vs fp32 CPU | batch-inv. |"
    out = [f"Denoiser rows per second on {device}.", "", head, "|---" * (len(sizes) + 3) + "|"]
    for r in rows:
        cells = [f"{r.rows_per_second[s]:,.0f}" if s in r.rows_per_second else "-" for s in sizes]
        err = f"{r.max_relative_error:.1e}" if r.max_relative_error is not None else "-"
        inv = "-" if r.batch_invariant is None else "yes" if r.batch_invariant else "no"
        if r.batch_invariant is False:
            inv += f" ({r.invariance_max_abs_diff:.1e})"
        out.append(f"| {r.engine} | " + " | ".join(cells) + f" | {err} | {inv} |")
        if r.error:
            out.append(f"| {r.engine} failed: {r.error} |")
    diagnosed = [r for r in rows if r.ms_per_call_sampling is not None]
    if diagnosed:
        out += [
            "",
            "Engine ms per 1024-row call: the same inputs again (as the curve), fresh inputs each call, "
            "real sampling (512 guided jobs):",
            "",
            "| engine | same | fresh | sampling |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {r.engine} | {r.ms_per_call_same_inputs:.1f} | {r.ms_per_call_fresh_inputs:.1f} "
            f"| {r.ms_per_call_sampling:.1f} |"
            for r in diagnosed
        ]
    torch_graph = next((r for r in rows if r.engine == "torch-fp16-cuda-graph"), None)
    ours = [r for r in rows if r.engine.startswith("ort-cuda")]
    if torch_graph and ours:
        out += ["", "Best onnxruntime engine (numpy in and out) / torch fp16 CUDA graph (device only):", ""]
        for s in sizes:
            best = max(ours, key=lambda r: r.rows_per_second.get(s, 0.0))
            if s in torch_graph.rows_per_second and s in best.rows_per_second:
                ratio = best.rows_per_second[s] / torch_graph.rows_per_second[s]
                out.append(f"- b={s}: {ratio:.2f}x ({best.engine})")
    return "\n".join(out) + "\n"


def log(row: Row) -> None:
    print(json.dumps(asdict(row)), file=sys.stderr, flush=True)


def save(out: Path, device: str, rows: Sequence[Row], sizes: Sequence[int]) -> None:
    """Both files, rewritten after every engine: a run cut short keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"device": device, "rows": [asdict(r) for r in rows]}
    (out / "gpu_engine.json").write_text(json.dumps(payload, indent=1))
    (out / "gpu_engine.md").write_text(render(rows, sizes, device))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("var/bench-gpu"))
    p.add_argument("--seconds", type=float, default=0.3, help="timed seconds per engine and batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument(
        "--matrix",
        choices=("full", "diagnosis"),
        default="full",
        help="full: every variant and way of calling; diagnosis: fp16 settings against each "
        "other, with real sampling timed",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    a = p.parse_args(argv)
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries of the installed torch wheels
    cuda = CUDA in ort.get_available_providers()
    device = "CPU"
    if cuda:
        import torch

        device = torch.cuda.get_device_name(0)
    stored = ModelStore().get(MODEL)
    rows: list[Row] = []

    def done(row: Row) -> None:
        rows.append(row)
        log(row)
        save(a.out, device, rows, a.sizes)

    if not cuda:
        modes = [Mode(f"{v}-plain", v, io_binding=False, padded=False) for v in stored.manifest.variant_names]
    elif a.matrix == "full":
        modes = full_matrix(stored.manifest.variant_names)
    else:
        modes = diagnosis_matrix()
    measure_engines(stored, modes, a.sizes, a.seconds, cuda, done, sampling=a.matrix == "diagnosis")
    if cuda and not a.no_torch:
        measure_torch(stored, a.sizes, a.seconds, done)
    print(render(rows, a.sizes, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
