"""Simulated denoisers for the real worker: what the service costs around a free or a fast device.

``SimulatedEngine`` takes over a loaded ``workers.engine.Engine`` (manifest, dtypes, condition
inputs) and replaces its calls: each returns a cheap function of the input with the output's
shape and dtype, after sleeping what the latency curve says a call of that many rows takes.
``time.sleep`` releases the GIL as a real device call does, so the worker's other threads
(heartbeats, probes) run meanwhile. Two devices:

- ``zero``: calls cost nothing (one multiply), the ceiling of the worker's own loop; a
  pipeline's text encoder and VAE decoder cost nothing either (``SimulatedComponent``), so a
  text-to-image model's ceiling shows what the worker does around its three stages;
- ``h200``: the measured curve of ``mnist-cfg-unet`` on an NVIDIA H200 (``H200_CURVE``),
  reported as device ``cuda`` so the worker's calibration and buckets take GPU sizes. No other
  stage has a measured H200 curve: a pipeline's other stages run for real there.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping

import numpy as np

from workers.engine import CallStats, Component, Engine

# Rows per second of mnist-cfg-unet:1 on one NVIDIA H200, "ort CUDA fp16, CUDA graph per
# bucket" in BENCHMARKS-GPU.md (the engine matrix, best of the calls in 0.3 s per size).
H200_CURVE: dict[int, float] = {
    1: 1_588.0,
    8: 10_182.0,
    64: 49_606.0,
    256: 95_957.0,
    1024: 111_764.0,
    2048: 111_794.0,
}
DEVICES = ("zero", "h200")
# The prediction the simulated denoiser returns: a fixed fraction of its input, so the
# sampler's update stays finite and the images are valid PNGs (their content is not looked at).
OUTPUT_SCALE = 0.1
ROUND_TRIPS_EVERY = 0.05  # seconds between writes of bench.simulated_worker's request count


class LatencyCurve:
    """Seconds per call from a throughput curve {rows per call: rows per second}.

    At a measured size a call of B rows takes B / rate(B); between two measured sizes the
    latency is linear in rows; below the smallest and above the largest size, rows cost what
    they cost at that size's rate."""

    def __init__(self, curve: Mapping[int, float]) -> None:
        if not curve:
            raise ValueError("an empty throughput curve")
        if any(size < 1 or rate <= 0 for size, rate in curve.items()):
            raise ValueError(f"sizes must be >= 1 and rates > 0, got {dict(curve)}")
        self.sizes = sorted(curve)
        self.rates = [float(curve[s]) for s in self.sizes]
        self.latencies = [s / r for s, r in zip(self.sizes, self.rates, strict=True)]

    @property
    def best_rows_per_second(self) -> float:
        return max(self.rates)

    def __call__(self, rows: int) -> float:
        if rows <= 0:
            return 0.0
        sizes, lat = self.sizes, self.latencies
        if rows <= sizes[0]:
            return rows / self.rates[0]
        if rows >= sizes[-1]:
            return rows / self.rates[-1]
        i = bisect.bisect_right(sizes, rows)  # sizes[i - 1] <= rows < sizes[i]
        lo, hi = sizes[i - 1], sizes[i]
        return lat[i - 1] + (rows - lo) * (lat[i] - lat[i - 1]) / (hi - lo)


class SimulatedEngine(Engine):
    """An ``Engine`` whose calls are simulated (see the module's docstring).

    Built from a loaded engine, whose state it takes over, so everything else the worker asks
    of an engine (manifest, ``example_condition``, buckets, ``load_seconds``) answers as the
    real one would. Calls are never padded: the curve gives each size's own latency."""

    def __init__(
        self,
        real: Engine,
        latency: Callable[[int], float] | None,
        device: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.__dict__.update(real.__dict__)  # not Engine.__init__: no second session to load
        self.latency = latency  # None: calls cost nothing
        self.device = device
        self.stats = CallStats()
        self.io_binding = self.cuda_graph = self.padded = False
        self._bound = self._bucketed = None
        self._sleep = sleep
        self._output_dtype = np.dtype(real.manifest.outputs[0].dtype)

    @property
    def providers(self) -> list[str]:
        return [f"simulated-{'zero' if self.latency is None else self.device}"]

    def run(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        rows = len(timestep)
        started = time.perf_counter()
        if self.latency is not None:
            self._sleep(self.latency(rows))
        out = np.multiply(sample, OUTPUT_SCALE, dtype=self._output_dtype)
        self.stats.record(rows, time.perf_counter() - started)
        return out

    def warm_up(self) -> float:
        return 0.0  # nothing to warm: no shapes, no buffers


class SimulatedComponent(Component):
    """A pipeline stage (``workers.engine.Component``) whose calls cost nothing: each returns
    the real component's output for the first row it saw of that input shape, once per row.

    The real component runs once per input shape (its first call), so outputs have the real
    shapes and dtypes and decoded images are real images; every other call is a copy."""

    def __init__(self, real: Component) -> None:
        self.__dict__.update(real.__dict__)  # not Component.__init__: no second session to load
        self._real = real
        self.stats = CallStats()
        self._first: dict[tuple[tuple[int, ...], str], np.ndarray] = {}

    def run(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        key = (tuple(x.shape[1:]), x.dtype.str)
        if (first := self._first.get(key)) is None:
            first = self._first[key] = self._real.run(x[:1])
        out = np.repeat(first, len(x), axis=0)
        self.stats.record(len(x), time.perf_counter() - started)
        return out


def simulated_stages(device: str) -> Callable[[str, Component], Component] | None:
    """The ``wrap_component`` for ``workers.main.run_worker`` on ``device``: free stages on
    ``zero``, the real ones (None) where no curve of theirs was measured."""
    if device not in DEVICES:
        raise ValueError(f"unknown simulated device {device!r} (one of {', '.join(DEVICES)})")
    return (lambda stage, real: SimulatedComponent(real)) if device == "zero" else None


def simulated(device: str) -> Callable[[Engine], Engine]:
    """The ``wrap_engine`` for ``workers.main.run_worker`` that simulates ``device``."""
    if device == "zero":
        return lambda real: SimulatedEngine(real, None, real.device)
    if device == "h200":
        curve = LatencyCurve(H200_CURVE)
        return lambda real: SimulatedEngine(real, curve, "cuda")
    raise ValueError(f"unknown simulated device {device!r} (one of {', '.join(DEVICES)})")
