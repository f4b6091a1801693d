"""The denoiser engine: the one module that imports onnxruntime.

Chooses execution providers (CUDA when available, else CPU), sets threads, runs one batch and
reports how long each call took. Callers hand numpy arrays in and get numpy out, whichever of
the three ways a call runs:

- plain ``session.run`` (the default on CPU);
- IOBinding (``EngineOptions.io_binding``, the default on CUDA): the output lands in a buffer
  on the provider's device that the engine owns and reuses (see ``BoundRun``);
- CUDA graphs (``EngineOptions.cuda_graph``, CUDA only): each call is padded to a batch bucket
  and runs through that bucket's session, which captured a graph over fixed device buffers
  (see ``BucketedSessions``).

On CUDA, calls are padded to batch buckets also without graphs (``use_padding``), and cuDNN
picks convolution algorithms heuristically rather than timing them all on every new shape:
measured on an H200, onnxruntime's default exhaustive search on the varying batch sizes of
continuous batching made the service several times slower than the engine alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from model_store.manifest import ComponentSpec, Manifest, TensorSpec
from workers.buckets import check_buckets, default_buckets, run_bucketed

log = logging.getLogger("diffq.engine")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

ProviderEntry = str | tuple[str, dict[str, str]]


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


def planned_device(requested: Sequence[str] | None = None) -> str:
    """``cuda`` when a session with these providers (None: automatic) would run on CUDA first,
    else ``cpu``; known before any session exists, so the model variant can follow it."""
    return "cuda" if choose_providers(ort.get_available_providers(), requested)[0] == CUDA else "cpu"


def choose_variant(requested: str, device: str, available: Sequence[str]) -> str:
    """The model variant to load (``fp32`` is the manifest's own file).

    ``auto``: ``fp16`` on CUDA when the model has one (tensor cores, half the memory traffic),
    ``fp32`` elsewhere (onnxruntime's CPU kernels are fp32: an fp16 graph casts around them
    and runs slower). A variant asked for by name must exist: a silent fallback would hide a
    deployment that does not run what its operator chose.
    """
    if requested == "auto":
        return "fp16" if device == "cuda" and "fp16" in available else "fp32"
    if requested not in available:
        raise EngineError(f"model variant {requested!r} not available (has {list(available)})")
    return requested


def use_io_binding(requested: bool | None, session_providers: Sequence[str]) -> bool:
    """IOBinding as asked; unset, it is on when the session runs on CUDA, where it saves the
    per-call output allocation, and off on CPU, where it buys nothing."""
    return CUDA in session_providers if requested is None else requested


def use_padding(requested: bool | None, session_providers: Sequence[str]) -> bool:
    """Pad calls to batch buckets as asked; unset, on with CUDA, off on CPU.

    On CUDA every new input shape costs: cuDNN picks (and, searching exhaustively, times)
    convolution algorithms per shape, so a worker whose calls take every size from 1 to its
    tick keeps paying that. Buckets bound the shapes to a few, all warmed at start-up
    (``Engine.warm_up``). On CPU a padded row costs as much as a real one and buys nothing.
    """
    return CUDA in session_providers if requested is None else requested


def cuda_options(conv_algo_search: str, capture: bool) -> dict[str, str]:
    """The CUDA execution provider's options: cuDNN's convolution algorithm search, and a
    captured CUDA graph when ``capture``."""
    options = {"cudnn_conv_algo_search": conv_algo_search}
    if capture:
        options["enable_cuda_graph"] = "1"
    return options


def use_cuda_graph(requested: bool, session_providers: Sequence[str]) -> bool:
    """CUDA graphs only when asked and the session's first provider is CUDA.

    Asked for without CUDA, they are turned off with a warning rather than failing the worker:
    graphs change speed, not results, and one setting may be shared by CPU and GPU workers.
    (A CUDA provider that was requested by name but is missing still fails, in
    ``choose_providers``.)
    """
    if not requested:
        return False
    if not session_providers or session_providers[0] != CUDA:
        log.warning(
            "cuda_graph requested but the session does not run on CUDA; running without graphs",
            extra={"providers": list(session_providers)},
        )
        return False
    return True


class EngineError(Exception):
    pass


@dataclass(frozen=True)
class EngineOptions:
    providers: tuple[str, ...] | None = None  # None: choose automatically
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    inter_op_threads: int = 1
    # onnxruntime's threads spin after each call by default, burning the cores Redis, the
    # gateway or the next numpy step need; off unless the host is the worker's alone.
    spinning: bool = False
    io_binding: bool | None = None  # None: on when the session runs on CUDA, off otherwise
    cuda_graph: bool = False  # CUDA only; ignored with a warning elsewhere (use_cuda_graph)
    pad_to_buckets: bool | None = None  # None: on with CUDA (see use_padding), off otherwise
    buckets: tuple[int, ...] = default_buckets(256)  # the batch sizes calls are padded to
    # HEURISTIC: cuDNN's pick per shape, at once. EXHAUSTIVE times every algorithm on each new
    # shape first (onnxruntime's default), which stalls a worker whose batch sizes vary.
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = "HEURISTIC"


@dataclass
class CallStats:
    """Running totals of denoiser calls (read by metrics and benchmarks)."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    last_seconds: float = 0.0
    last_rows: int = 0

    def record(self, rows: int, seconds: float) -> None:
        self.calls += 1
        self.rows += rows
        self.seconds += seconds
        self.last_seconds, self.last_rows = seconds, rows


class Engine:
    """Runs the denoiser from a manifest's ONNX file."""

    def __init__(
        self, model_path: Path, manifest: Manifest, options: EngineOptions = EngineOptions()
    ) -> None:
        self._model_path = model_path
        self._options = options
        self._providers = choose_providers(ort.get_available_providers(), options.providers)
        started = time.perf_counter()
        self._session = self._new_session(self._provider_entries(capture=False))
        self.load_seconds = time.perf_counter() - started
        self.manifest = manifest
        self._check_io(manifest)
        self._input_names = [spec.name for spec in manifest.inputs]
        self._output_name = manifest.outputs[0].name
        self._timestep_dtype = np.dtype(manifest.inputs[1].dtype)  # float32, or an export's int64
        self._condition_dtype = np.dtype(manifest.inputs[2].dtype)
        self.stats = CallStats()
        session_providers = self.providers
        self.device = "cuda" if CUDA in session_providers else "cpu"
        self.io_binding = use_io_binding(options.io_binding, session_providers)
        self.cuda_graph = use_cuda_graph(options.cuda_graph, session_providers)
        self.padded = self.cuda_graph or use_padding(options.pad_to_buckets, session_providers)
        self.buckets = check_buckets(options.buckets)
        self._bound = BoundRun(self._session, manifest, self.device) if self.io_binding else None
        self._bucketed = self.bucketed(self.buckets, capture=True) if self.cuda_graph else None
        if self._bucketed is not None:
            # Build the smallest bucket now: a model CUDA graphs cannot run fails the start,
            # not a job. The other buckets are built on their first call (or in warm_up).
            self._bucketed.prepare(self._bucketed.buckets[0])

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def _provider_entries(self, capture: bool) -> list[ProviderEntry]:
        return provider_entries(self._providers, self._options, capture)

    def _new_session(self, providers: Sequence[ProviderEntry]) -> ort.InferenceSession:
        return new_session(self._model_path, self._options, providers)

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

    def bucketed(self, buckets: Sequence[int], *, capture: bool) -> BucketedSessions:
        """Padded calls over fixed per-bucket buffers on this engine's device.

        ``capture=True`` (CUDA only) makes each bucket's session capture a CUDA graph; the
        engine uses that when ``cuda_graph`` is on. ``capture=False`` runs the same padding,
        buffers and bindings with the engine's own providers, which is how the path is tested
        on CPU.
        """
        if capture and (self.device != "cuda" or self._providers[0] != CUDA):
            raise EngineError(f"CUDA graphs need the CUDA provider first, have {self._providers}")
        providers = self._provider_entries(capture)
        return BucketedSessions(
            lambda: self._new_session(providers),
            self.manifest,
            self.device,
            check_buckets(buckets),
            unbucketed=self._run_unbucketed,
        )

    def run(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        """One denoiser call over a batch: [B,C,H,W] float32, [B] float32, and the condition per
        row: [B] int64 class labels, or [B, seq, dim] hidden states, in the manifest's dtype."""
        inputs = (
            np.ascontiguousarray(sample, dtype=np.float32),
            np.ascontiguousarray(timestep, dtype=self._timestep_dtype),
            np.ascontiguousarray(condition, dtype=self._condition_dtype),
        )
        started = time.perf_counter()
        out = self._dispatch(*inputs)
        self.stats.record(len(timestep), time.perf_counter() - started)
        return out

    def warm_up(self) -> float:
        """One call at every bucket size (padded engines) so no job pays for a first call at a
        new shape (cuDNN's algorithm choice, buffer sizing, a graph's capture); seconds taken.
        An engine that does not pad is left alone: its shapes are open-ended."""
        started = time.perf_counter()
        if self.padded:
            for size in self.buckets:
                zeros = np.zeros((size, *self.manifest.sample_shape()), dtype=np.float32)
                self._dispatch(zeros, np.zeros(size, dtype=np.float32), self.example_condition(size))
        return time.perf_counter() - started

    def example_condition(self, rows: int, seed: int = 0) -> np.ndarray:
        """A valid condition input for ``rows`` rows (class labels or hidden states), for
        warm-up and calibration calls whose cost does not depend on the values."""
        spec = self.manifest.inputs[2]
        rng = np.random.default_rng(seed)
        if self._condition_dtype == np.int64:
            return rng.integers(0, max(1, len(self.manifest.classes)), rows).astype(np.int64)
        return rng.standard_normal((rows, *self.condition_row_shape(spec)), dtype=np.float32)

    def condition_row_shape(self, spec: TensorSpec) -> list[int]:
        """The hidden states' shape per row: the manifest's fixed dimensions, with a dynamic
        sequence length taken from the tokenizer."""
        tokens = self.manifest.tokenizer.model_max_length if self.manifest.tokenizer else 1
        return [d if isinstance(d, int) else tokens for d in spec.shape[1:]]

    def use_buckets(self, buckets: Sequence[int]) -> None:
        """Pad to these batch sizes from now on (e.g. one fixed size, once the tick is known)."""
        self.buckets = check_buckets(buckets)
        if self._bucketed is not None:
            self._bucketed.buckets = self.buckets

    def _dispatch(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        if self._bucketed is not None:
            return self._bucketed.run(sample, timestep, condition)
        if self.padded:
            return run_bucketed(self._run_unbucketed, self.buckets, sample, timestep, condition)
        return self._run_unbucketed(sample, timestep, condition)

    def _run_unbucketed(self, *inputs: np.ndarray) -> np.ndarray:
        if self._bound is not None:
            return self._bound.run(*inputs)
        feeds = dict(zip(self._input_names, inputs, strict=True))
        (out,) = self._session.run([self._output_name], feeds)
        return np.asarray(out)


class Component:
    """A pipeline's other ONNX file (text encoder, VAE decoder): one input, its first output,
    plain calls on the engine's providers and threads, with the same call statistics."""

    def __init__(self, path: Path, spec: ComponentSpec, options: EngineOptions = EngineOptions()) -> None:
        providers = choose_providers(ort.get_available_providers(), options.providers)
        started = time.perf_counter()
        self._session = new_session(path, options, provider_entries(providers, options, capture=False))
        self.load_seconds = time.perf_counter() - started
        self.spec = spec
        got = [i.name for i in self._session.get_inputs()][:1] + [
            o.name for o in self._session.get_outputs()
        ][:1]
        if got != [spec.inputs[0].name, spec.outputs[0].name]:
            raise EngineError(f"{path.name}: ONNX I/O {got} does not match the manifest's component spec")
        self._dtype = np.dtype(spec.inputs[0].dtype)
        self.stats = CallStats()

    def run(self, x: np.ndarray) -> np.ndarray:
        """One call over a batch (rows are independent)."""
        started = time.perf_counter()
        (out,) = self._session.run(
            [self.spec.outputs[0].name],
            {self.spec.inputs[0].name: np.ascontiguousarray(x, dtype=self._dtype)},
        )
        self.stats.record(len(x), time.perf_counter() - started)
        return np.asarray(out)


def provider_entries(providers: Sequence[str], options: EngineOptions, capture: bool) -> list[ProviderEntry]:
    """The providers with their options (CUDA's: cuDNN search, graph capture)."""
    return [(p, cuda_options(options.cudnn_conv_algo_search, capture)) if p == CUDA else p for p in providers]


def new_session(
    path: Path, options: EngineOptions, providers: Sequence[ProviderEntry]
) -> ort.InferenceSession:
    """An onnxruntime session with the engine's threading and optimisation settings."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))


class BoundRun:
    """Calls through IOBinding: numpy inputs bound from host memory, the output written into a
    buffer on the session's device that this object owns and reuses.

    The buffer is allocated once per capacity (grown to the next power of two when a bigger
    batch comes) and each call binds its first B rows, so no call allocates device memory for
    its output; the result is copied to the host once, at the end of the call.

    What stays on the device: the output buffer, and everything between the inputs and the
    output (as in any onnxruntime call). What cannot yet: the latents. The sampler's update is
    numpy on the host, so ``x`` goes host -> device and the prediction device -> host every
    step; keeping ``x`` on the device would need the sampler math there too (and the seeded
    per-image noise with it). Measured for a small fp32 UNet on an H200, host inputs and
    outputs plus the numpy update cost 1.03x to 1.06x of an all-device IOBinding call, so
    that move waits for a measurement on this model.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str) -> None:
        self._session = session
        self._device = device
        self._input_names = [spec.name for spec in manifest.inputs]
        self._output = manifest.outputs[0]
        self._row_shape: list[int] = []
        self._dtype = np.dtype(self._output.dtype)
        self._buffer: ort.OrtValue | None = None
        self._capacity = 0

    def run(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        rows = len(timestep)
        row_shape = list(sample.shape[1:])  # the denoiser's output has its input's shape
        if rows > self._capacity or row_shape != self._row_shape:
            self._capacity = 1 << max(0, rows - 1).bit_length()
            self._row_shape = row_shape
            self._buffer = ort.OrtValue.ortvalue_from_shape_and_type(
                [self._capacity, *self._row_shape], self._dtype, self._device, 0
            )
        assert self._buffer is not None
        binding = self._session.io_binding()
        for name, array in zip(self._input_names, (sample, timestep, condition), strict=True):
            binding.bind_cpu_input(name, array)
        binding.bind_output(
            self._output.name,
            self._device,
            0,
            self._dtype,
            [rows, *self._row_shape],
            self._buffer.data_ptr(),
        )
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])


@dataclass
class _BucketSession:
    """One bucket's session, bound once to device buffers whose addresses never change (a
    captured graph replays with the addresses it was captured with)."""

    session: ort.InferenceSession
    binding: ort.IOBinding
    inputs: list[ort.OrtValue]
    output: ort.OrtValue


class BucketedSessions:
    """Calls padded to a batch bucket, each bucket with its own session and fixed buffers.

    A graph replays the shapes and buffer addresses it was captured with. Each bucket gets its
    own session, which captures one graph, created on the bucket's first call (``prepare``
    builds one ahead). A call copies its padded inputs into the bucket's input buffers
    (``update_inplace``), replays, and copies the output back; rows above the largest bucket
    run unpadded through ``unbucketed``. Every bucket session holds its own copy of the
    weights on the device. (onnxruntime can also keep several graphs in one session, picked
    per run by the ``gpu_graph_id`` run option, which would share the weights; not used yet.)
    """

    def __init__(
        self,
        new_session: Callable[[], ort.InferenceSession],
        manifest: Manifest,
        device: str,
        buckets: tuple[int, ...],
        unbucketed: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    ) -> None:
        self._new_session = new_session
        self._manifest = manifest
        self._device = device
        self.buckets = buckets
        self._unbucketed = unbucketed
        self._sessions: dict[int, _BucketSession] = {}
        self._warned_oversize = False

    @property
    def built(self) -> list[int]:
        """Buckets whose session exists, ascending."""
        return sorted(self._sessions)

    def prepare(self, bucket: int) -> None:
        if bucket in self._sessions:
            return
        started = time.perf_counter()
        try:
            session = self._new_session()
        except Exception as exc:  # onnxruntime raises its own types; name the feature that failed
            raise EngineError(f"could not create the session for batch bucket {bucket}: {exc}") from exc
        binding = session.io_binding()
        inputs = []
        for spec in self._manifest.inputs:
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                [bucket, *_row_shape(spec)], np.dtype(spec.dtype), self._device, 0
            )
            binding.bind_ortvalue_input(spec.name, value)
            inputs.append(value)
        out_spec = self._manifest.outputs[0]
        output = ort.OrtValue.ortvalue_from_shape_and_type(
            [bucket, *_row_shape(out_spec)], np.dtype(out_spec.dtype), self._device, 0
        )
        binding.bind_ortvalue_output(out_spec.name, output)
        self._sessions[bucket] = _BucketSession(session, binding, inputs, output)
        log.info(
            "batch bucket session created",
            extra={"bucket": bucket, "seconds": round(time.perf_counter() - started, 3)},
        )

    def run(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        if len(timestep) > self.buckets[-1] and not self._warned_oversize:
            self._warned_oversize = True
            log.info(
                "calls above the largest batch bucket run without padding or a graph",
                extra={"rows": len(timestep), "largest_bucket": self.buckets[-1]},
            )
        return run_bucketed(
            self._run_bucket, self.buckets, sample, timestep, condition, unbucketed=self._unbucketed
        )

    def _run_bucket(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        bucket = len(timestep)
        self.prepare(bucket)
        entry = self._sessions[bucket]
        for value, array in zip(entry.inputs, (sample, timestep, condition), strict=True):
            value.update_inplace(np.ascontiguousarray(array))
        # update_inplace copies outside onnxruntime's stream: wait for it before the replay.
        entry.binding.synchronize_inputs()
        entry.session.run_with_iobinding(entry.binding)
        return np.asarray(entry.binding.copy_outputs_to_cpu()[0])


def _row_shape(spec: TensorSpec) -> list[int]:
    """A tensor's shape without its batch axis; bound buffers need every other axis fixed."""
    rest = spec.shape[1:]
    if not all(isinstance(d, int) for d in rest):
        raise EngineError(f"{spec.name}: IOBinding needs fixed non-batch dimensions, got {spec.shape}")
    return [int(d) for d in rest]


_ORT_TYPES = {"float32": "float", "float16": "float16", "int64": "int64"}
