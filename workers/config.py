"""Worker settings (read once in ``main``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from diffq import failpoints
from diffq.settings import CommonSettings
from model_store.manifest import VARIANT_NAME


class WorkerSettings(CommonSettings):
    model: str | None = Field(
        default=None, description="Model this worker serves; default: the first in the store."
    )
    model_variant: str = Field(
        default="auto",
        pattern=VARIANT_NAME,
        description="Model precision variant from the manifest (fp32, fp16, ...); auto = fp16 on "
        "CUDA when the model has one, fp32 otherwise. Images are byte-identical per variant and "
        "hardware, not across them.",
    )
    max_batch_rows: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Most denoiser rows per call (guided images count twice); 0 = measure the "
        "engine at start-up and take the knee of its throughput curve.",
    )
    backlog_batch_rows: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="Adaptive batching: most denoiser rows per call while jobs wait in the queue, "
        "where only throughput counts (max_batch_rows is the light-load size). 0 = the "
        "throughput-optimal size of the engine curve measured at start-up when max_batch_rows is "
        "0 too, else max_batch_rows (no adaptation). Fixed buckets (one shape per call) turn it off.",
    )
    overlap_host_work: bool = Field(
        default=True,
        description="Run each step's denoiser calls on their own thread while the loop writes "
        "progress and stores the jobs the step before finished (decoding, PNGs, results, acks), "
        "so the engine does not wait for Redis; off: one after the other.",
    )
    batching: Literal["continuous", "request"] = Field(
        default="continuous",
        description="continuous: jobs join the running set between steps; request: a batch runs "
        "to completion before the next one forms (for comparison).",
    )
    max_wait_ms: int = Field(
        default=10,
        ge=0,
        le=10_000,
        description="Request-level batching: how long an idle worker gathers jobs before its first step.",
    )
    poll_ms: int = Field(
        default=1000,
        ge=10,
        le=60_000,
        description="How long an idle worker waits for a submission to be announced before it looks at "
        "the queue again (announcements wake it at once; this bounds a missed one).",
    )
    progress_interval_ms: int = Field(
        default=50,
        ge=0,
        le=60_000,
        description="Write running jobs' steps (and read their cancel requests) at most this often; "
        "0 = every step. Each write waits for Redis's fsync: a few ms per step that short jobs on "
        "fast hardware would feel.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A claimed job not renewed for this long is reclaimed by others.",
    )
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="onnxruntime threads; 0 = all cores.")
    ort_spinning: bool = Field(
        default=False,
        description="Let onnxruntime's threads spin between calls: a few percent faster on cores "
        "the worker has alone, slower for everything else on a shared host.",
    )
    providers: tuple[str, ...] | None = Field(
        default=None, description="onnxruntime providers; default: auto."
    )
    io_binding: bool | None = Field(
        default=None,
        description="Run the denoiser through onnxruntime IOBinding (its output buffer stays on the "
        "provider's device and is reused); unset: on with the CUDA provider, off on CPU.",
    )
    cuda_graph: bool = Field(
        default=False,
        description="CUDA only: pad each denoiser call to a batch bucket (powers of two up to "
        "max_batch_rows) and replay a CUDA graph captured per bucket; without CUDA it is turned "
        "off with a warning.",
    )
    pad_to_buckets: bool | None = Field(
        default=None,
        description="Pad each denoiser call to a batch bucket, so the engine sees a few shapes, all "
        "warmed at start-up; unset: on with CUDA (new shapes are slow there), off on CPU.",
    )
    batch_buckets: Literal["auto", "pow2", "fixed"] = Field(
        default="auto",
        description="Padded calls: pow2 pads to the next power of two up to max_batch_rows; fixed "
        "pads every call to max_batch_rows, one shape, so a row's result cannot depend on the "
        "batch it ran in (the seed contract on GPUs, where cuDNN's results vary with the batch "
        "size), at the cost of full-size calls at low load; auto = fixed on CUDA, pow2 elsewhere.",
    )
    cudnn_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        default="HEURISTIC",
        description="CUDA: how cuDNN picks convolution algorithms for each new shape (EXHAUSTIVE "
        "times them all first, onnxruntime's own default).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Deliveries after which a job that never finishes goes to the dead-letter stream.",
    )
    worker_port: int = Field(
        default=9200, ge=1, le=65535, description="HTTP port for /livez, /readyz and /metrics."
    )
    probe_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="On the probe port, each request (line and headers) must arrive within this of "
        "the connection opening or of the previous answer; an idle connection closes after it.",
    )
    probe_max_header_bytes: int = Field(
        default=8192,
        ge=1024,
        le=1 << 20,
        description="Largest request line plus headers on the probe port; past it, 431 and close.",
    )
    probe_max_connections: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Connections the probe port holds (one thread serves them all); past it a new "
        "one closes the connection that has waited longest.",
    )
    stall_seconds: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="/livez fails once the worker loop has not gone round for this long.",
    )
    worker_id: str | None = Field(default=None, description="Consumer name; default: host-pid.")
    failpoints: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(),
        description="For fault tests only: comma-separated failpoints where the worker kills itself.",
    )

    @field_validator("failpoints", mode="before")
    @classmethod
    def _known_failpoints(cls, value: str | Iterable[str]) -> frozenset[str]:
        return failpoints.parse(value if isinstance(value, str) else ",".join(value))
