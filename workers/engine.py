"""The denoiser engine: the one module that imports onnxruntime.

Chooses execution providers (CUDA when available, else CPU), sets threads, runs one batch and
reports how long each call took. Callers hand numpy arrays in and get numpy out; a CUDA
engine with IOBinding can sit behind the same ``run`` without changing them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_store.manifest import Manifest

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """Providers to use, in priority order.

    With nothing requested: CUDA first when onnxruntime offers it, CPU always last as the
    fallback. Requested providers that this onnxruntime build lacks are an error, not a
    silent fallback: an operator who asked for the GPU should learn that they did not get it.
    """
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineError(
                f"providers {missing} not available in this onnxruntime (has {list(available)})"
            )
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = [p for p in (CUDA,) if p in available]
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)
    return chosen


class EngineError(Exception):
    pass


@dataclass(frozen=True)
class EngineOptions:
    providers: tuple[str, ...] | None = None  # None: choose automatically
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    inter_op_threads: int = 1


@dataclass
class CallStats:
    """Running totals of denoiser calls (read by metrics and benchmarks)."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    last_seconds: float = 0.0
    last_rows: int = 0


class Engine:
    """Runs the denoiser from a manifest's ONNX file."""

    def __init__(
        self, model_path: Path, manifest: Manifest, options: EngineOptions = EngineOptions()
    ) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(ort.get_available_providers(), options.providers)
        started = time.perf_counter()
        self._session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        self.load_seconds = time.perf_counter() - started
        self.manifest = manifest
        self._check_io(manifest)
        self._input_names = [spec.name for spec in manifest.inputs]
        self._output_name = manifest.outputs[0].name
        self.stats = CallStats()

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _check_io(self, manifest: Manifest) -> None:
        got_in = [(i.name, i.type) for i in self._session.get_inputs()]
        got_out = [(o.name, o.type) for o in self._session.get_outputs()]
        want_in = [(s.name, f"tensor({_ORT_TYPES[s.dtype]})") for s in manifest.inputs]
        want_out = [(s.name, f"tensor({_ORT_TYPES[s.dtype]})") for s in manifest.outputs]
        if got_in != want_in or got_out != want_out:
            raise EngineError(
                f"{manifest.ref}: ONNX I/O {got_in} -> {got_out} does not match the manifest's "
                f"{want_in} -> {want_out}"
            )

    def run(self, sample: np.ndarray, timestep: np.ndarray, class_label: np.ndarray) -> np.ndarray:
        """One denoiser call over a batch: [B,C,H,W] float32, [B] float32, [B] int64."""
        feeds = dict(
            zip(
                self._input_names,
                (
                    np.ascontiguousarray(sample, dtype=np.float32),
                    np.ascontiguousarray(timestep, dtype=np.float32),
                    np.ascontiguousarray(class_label, dtype=np.int64),
                ),
                strict=True,
            )
        )
        started = time.perf_counter()
        (out,) = self._session.run([self._output_name], feeds)
        elapsed = time.perf_counter() - started
        s = self.stats
        s.calls += 1
        s.rows += len(timestep)
        s.seconds += elapsed
        s.last_seconds, s.last_rows = elapsed, len(timestep)
        return np.asarray(out)


_ORT_TYPES = {"float32": "float", "float16": "float16", "int64": "int64"}
