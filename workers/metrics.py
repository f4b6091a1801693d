"""A worker's Prometheus families, on its own registry, served on the worker's HTTP port.

One worker process serves one model, so every family carries the ``model`` label and the
scrape target (pod, instance) tells workers apart; the worker id is never a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from diffq.jobs import ErrorType, Job, Status
from diffq.metrics import BATCH_BUCKETS, CALL_BUCKETS, DURATION_BUCKETS, PREFIX, add_build_info


class WorkerMetrics:
    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry or CollectorRegistry()
        r = self.registry
        add_build_info(r, "worker")
        self.model_load = Gauge(
            f"{PREFIX}_model_load_seconds", "Time to load the model into the engine.", ["model"], registry=r
        )
        self.tick_rows = Gauge(
            f"{PREFIX}_worker_tick_rows",
            "Most denoiser rows per call at light load (configured, or the latency-optimal size "
            "of the engine curve measured at start).",
            ["model"],
            registry=r,
        )
        self.backlog_rows = Gauge(
            f"{PREFIX}_worker_backlog_rows",
            "Most denoiser rows per call while jobs wait in the queue (adaptive batching; the "
            "throughput-optimal size of the engine curve, or configured).",
            ["model"],
            registry=r,
        )
        self.row_budget = Gauge(
            f"{PREFIX}_worker_row_budget",
            "Rows per denoiser call the running set may grow to now: the tick, or the backlog "
            "size while jobs wait in the queue.",
            ["model"],
            registry=r,
        )
        self.mode_switches = Counter(
            f"{PREFIX}_worker_batch_mode_switches",
            "Adaptive batching's switches, by the mode switched to (backlog or light).",
            ["model", "mode"],
            registry=r,
        )
        self.call_duration = Histogram(
            f"{PREFIX}_denoiser_call_duration_seconds",
            "Duration of one denoiser call over the whole batch.",
            ["model"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            f"{PREFIX}_stage_duration_seconds",
            "Time in a pipeline's other stages at one step: text_encoder (the prompts of the jobs "
            "joining, one call), vae_decoder (the images finishing, one call per image size).",
            ["model", "stage"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.batch_images = Histogram(
            f"{PREFIX}_batch_images",
            "Images stepped together per denoiser call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_rows",
            "Denoiser rows per call (a guided image takes two).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            f"{PREFIX}_images_generated", "Images generated and stored.", ["model"], registry=r
        )
        self.finished = Counter(
            f"{PREFIX}_jobs_finished", "Jobs that reached a terminal status.", ["model", "status"], registry=r
        )
        self.errors = Counter(
            f"{PREFIX}_job_errors", "Failed jobs by error type.", ["model", "error_type"], registry=r
        )
        self.duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Per-job time by phase: queue (submit to start), run (start to finish), total.",
            ["model", "phase"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            f"{PREFIX}_worker_jobs_in_flight", "Jobs this worker is stepping.", ["model"], registry=r
        )
        self.images_in_flight = Gauge(
            f"{PREFIX}_worker_images_in_flight", "Images this worker is stepping.", ["model"], registry=r
        )
        self.busy = Counter(
            f"{PREFIX}_worker_busy_seconds",
            "Time spent stepping jobs; its rate is the worker's busy fraction.",
            ["model"],
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_job_retries",
            "Job starts after the first delivery (attempts > 1).",
            ["model"],
            registry=r,
        )
        self.reclaims = Counter(
            f"{PREFIX}_job_reclaims",
            "Queue entries taken over from a worker whose lease ran out.",
            ["model"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Jobs moved to the dead-letter stream after too many deliveries.",
            ["model"],
            registry=r,
        )
        # Children with the model label bound once, so the loop does no label lookups.
        m = model
        self._call = self.call_duration.labels(m)
        self._batch_images = self.batch_images.labels(m)
        self._batch_rows = self.batch_rows.labels(m)
        self._images = self.images.labels(m)
        self._busy = self.busy.labels(m)
        self._duration = {phase: self.duration.labels(m, phase) for phase in ("queue", "run", "total")}
        self._finished = {  # exported at 0 from the start
            status: self.finished.labels(m, status.value)
            for status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)
        }
        for error_type in ErrorType:
            self.errors.labels(m, error_type.value)
        for counter in (self.retries, self.reclaims, self.dead_letters, self.images, self.busy):
            counter.labels(m)
        for mode in ("backlog", "light"):
            self.mode_switches.labels(m, mode)

    def loaded(self, seconds: float) -> None:
        self.model_load.labels(self.model).set(seconds)

    def batch_sizes(self, tick_rows: int, backlog_rows: int) -> None:
        """The two row budgets, set once the tick is known; the light one applies first."""
        self.tick_rows.labels(self.model).set(tick_rows)
        self.backlog_rows.labels(self.model).set(backlog_rows)
        self.row_budget.labels(self.model).set(tick_rows)

    def batch_mode(self, backlog: bool, budget: int) -> None:
        """Adaptive batching switched to the backlog budget, or back to the light-load one."""
        self.mode_switches.labels(self.model, "backlog" if backlog else "light").inc()
        self.row_budget.labels(self.model).set(budget)

    def step(self, images: int, rows: int, call_seconds: float, busy_seconds: float) -> None:
        """One tick: a denoiser call over ``rows`` rows of ``images`` images."""
        self._call.observe(call_seconds)
        self._batch_images.observe(images)
        self._batch_rows.observe(rows)
        self._busy.inc(busy_seconds)

    def stage_call(self, stage: str, seconds: float) -> None:
        """A step's time in the text encoder or the VAE decoder."""
        self.stage_duration.labels(self.model, stage).observe(seconds)

    def in_flight(self, jobs: int, images: int) -> None:
        self.jobs_in_flight.labels(self.model).set(jobs)
        self.images_in_flight.labels(self.model).set(images)

    def started(self, job: Job) -> None:
        """``job`` just moved to running."""
        if job.queue_seconds is not None:
            self._duration["queue"].observe(max(0.0, job.queue_seconds))
        if job.attempts > 1:
            self.retries.labels(self.model).inc()

    def finished_job(self, job: Job) -> None:
        """``job`` just reached a terminal status (as stored by this worker)."""
        self._finished[job.status].inc()
        if job.status == Status.SUCCEEDED:
            self._images.inc(job.image_count)
        if job.error is not None:
            self.errors.labels(self.model, job.error.type).inc()
        for phase, seconds in (("run", job.run_seconds), ("total", job.total_seconds)):
            if seconds is not None and job.status in (Status.SUCCEEDED, Status.FAILED):
                self._duration[phase].observe(max(0.0, seconds))

    def reclaimed(self, count: int) -> None:
        self.reclaims.labels(self.model).inc(count)

    def dead_lettered(self) -> None:
        self.dead_letters.labels(self.model).inc()
