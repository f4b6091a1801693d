"""The worker loop: claim jobs, step them together through the denoiser, store the images.

Each loop iteration: take new jobs while rows are free (a text model encodes their prompts in
one text-encoder call), drop cancelled ones, run one denoiser call per sample shape over every
in-flight image (each at its own step of its own sampler), record progress, and finish the jobs
whose images are done: decoded together (a latent model's VAE decoder), PNGs stored first, then
the status, then the ack.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from diffq import failpoints
from diffq.eta import PaceMeter
from diffq.failpoints import Failpoints
from diffq.jobs import ErrorType, Job, JobError, JobRequest, Status, expire, image_seed, transition
from diffq.store import Claimed, NewWork, RedisStore
from model_store.manifest import Manifest
from sampling.denoise import Condition, RowState, denoise_step, start_row
from sampling.registry import get_plan
from workers.batching import BatchPolicy, free_rows, keep_gathering
from workers.config import WorkerSettings
from workers.engine import Engine
from workers.metrics import WorkerMetrics
from workers.pipeline import TEXT_ENCODER, VAE_DECODER, Decoder, PromptError, TextEncoder, sample_shape
from workers.png import encode_png
from workers.scheduler import Batch, InFlight, Scheduler

log = logging.getLogger("diffq.worker")

# While Redis is unreachable the loop retries after 0.1 s, doubling up to 5 s: quick to notice
# a restart, gentle on a server that is coming back up.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
GATHER_POLL_SECONDS = 0.001  # how often an idle worker looks for more jobs while it gathers
# A busy worker that found the queue empty claims again once a submission is announced
# (``RedisStore.new_work``), and without one at most this often (announcements are a hint).
CLAIM_EVERY_SECONDS = 0.1


def claim_count(free_rows: int) -> int:
    """Entries to ask for when ``free_rows`` rows are free: one per two rows (a guided image,
    the default), at least one, at most 64 a read."""
    return max(1, min(64, free_rows // 2))


def outage_backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt in a row (1-based)."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** min(max(0, failures - 1), 32))


Flight = InFlight[Claimed]


@dataclass
class Worker:
    settings: WorkerSettings
    store: RedisStore
    engine: Engine
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    stop: threading.Event = field(default_factory=threading.Event)
    metrics: WorkerMetrics | None = None
    encoder: TextEncoder | None = None  # text-to-image models: prompts to hidden states
    decoder: Decoder = field(default_factory=Decoder)  # latent models: the VAE decoder

    def __post_init__(self) -> None:
        self.manifest: Manifest = self.engine.manifest
        self.model = self.manifest.name
        if self.metrics is None:
            self.metrics = WorkerMetrics(self.model)
        self.metrics.loaded(self.engine.load_seconds)
        self.last_tick: float | None = None  # monotonic time the loop last went round
        self._cancel_flags: set[str] = set()  # cancels requested, as of the last progress write
        self._watched: set[str] = set()  # jobs an event stream follows: their every step is written
        self._queue_empty_at = 0.0  # monotonic time a claim last came back empty
        self._last_progress = 0.0  # monotonic time of the last progress write
        self._news: NewWork | None = None  # submissions announced to this worker
        self._announced = False  # one was, and no claim has looked since
        self.policy = BatchPolicy(
            self.settings.max_batch_rows, self.settings.max_wait_ms / 1000, self.settings.backlog_batch_rows
        )
        self.scheduler: Scheduler[Claimed] = Scheduler(self.policy, self.settings.batching == "continuous")
        self._last_beat = 0.0
        # Published with each heartbeat, for the gateway's estimates; a full batch is the
        # budget under a backlog.
        self.pace = PaceMeter(full_rows=self.policy.rows(backlog=True))
        self._last_reclaim = 0.0
        self.failpoints = Failpoints(self.settings.failpoints)
        self._connected = False  # joined the queue, and Redis answered the last call
        self._outage_started: float | None = None  # monotonic; None while Redis answers
        self._failures = 0  # failed attempts in a row during the current outage
        # The denoiser thread while ``run`` runs (``overlap_host_work``): calls run there while
        # this one does the step's Redis work.
        self._calls: ThreadPoolExecutor | None = None

    # ---- the loop ----------------------------------------------------------------------
    def run(self, burst: bool = False) -> None:
        """Serve until ``stop`` is set (then drain what was taken), or, in burst mode, until idle.

        Redis going away does not end the loop: it backs off, and once Redis answers again it
        carries on with what it held (``_resume``).
        """
        log.info("worker started", extra={"worker": self.worker_id, "model": self.model})
        if self.settings.overlap_host_work:
            self._calls = ThreadPoolExecutor(1, "denoiser")
        try:
            while True:
                self.last_tick = time.monotonic()
                try:
                    if not self._connected:
                        self._resume()
                    self._heartbeat()
                    if not self.stop.is_set():
                        self._take_work()
                    if self.scheduler.idle:
                        if self.stop.is_set() or (burst and not self._reclaim(force=True)):
                            break
                        continue
                    self._admit()
                    self._drop_cancelled()
                    self._drop_expired()
                    if self.scheduler.running:
                        self._step()
                    self._report_in_flight()
                except RedisStore.UNREACHABLE as e:
                    if not self._back_off(e):
                        break
        finally:
            if self._calls is not None:
                self._calls.shutdown(wait=True)
                self._calls = None
            self._report_in_flight()
            self._leave()
            log.info("worker stopped", extra={"worker": self.worker_id})

    @property
    def connected(self) -> bool:
        """Joined the queue and Redis answered the last call: part of ``/readyz``."""
        return self._connected

    def _back_off(self, error: Exception) -> bool:
        """Redis failed a call: say so, wait, and return True to try again, keeping what this
        worker holds.

        An outage (Redis out of reach, or restarting) is logged once. A refusal (the store is
        full, read-only, or refused a command: a broken script, say) is logged at every retry
        (the back-off spaces them up to 5 s apart), with the error's type and message: it does
        not pass by itself. False when the worker is stopping: what it holds goes back to the
        queue when its lease runs out, so waiting for Redis would only hold up the shutdown.
        """
        fault = RedisStore.fault(error)
        self._connected = False
        self._failures += 1
        what = {
            "worker": self.worker_id,
            "error": fault.error,
            "reason": fault.reason,
            "jobs_held": self._held(),
        }
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            if fault.transient:
                log.warning("redis unreachable; retrying with backoff", extra=what)
        if not fault.transient:
            log.warning(
                "redis refused a command; retrying with backoff", extra={**what, "detail": fault.detail}
            )
        if self.stop.is_set():
            log.warning(
                "stopping while redis is unreachable; held jobs return to the queue after their lease",
                extra={"worker": self.worker_id, "jobs_held": self._held()},
            )
            return False
        self.stop.wait(outage_backoff(self._failures))  # a SIGTERM cuts the wait short
        return True

    def _held(self) -> int:
        return self.scheduler.held

    def _resume(self) -> None:
        """Join the queue: at start-up, and again when Redis answers after an outage.

        Jobs held through an outage are kept, not dropped: their denoiser state is still good,
        and dropping them would cost a lease period, a recomputation and one of their attempts
        (a few Redis restarts must not dead-letter a healthy job). They are checked before they
        are trusted, since the outage may have been this worker's alone and others may have
        taken some over: a job now terminal is acked and dropped, one running under another
        worker is dropped without an ack (the entry is that worker's now), the rest are renewed
        at once. Nobody could renew a lease during the outage, so every entry now looks idle:
        this worker waits one more lease before reclaiming others' entries, giving live owners
        time to come back and renew. Exactly-once results do not depend on any of this (see
        ``_finish_succeeded``); it only saves work.
        """
        self.store.ensure_group(self.model)
        if self._news is not None:
            self._news.close()
        self._news = self.store.new_work(self.model)
        sched = self.scheduler
        if sched.running:
            flights = list(sched.running.values())
            records = self.store.get_many([f.job.id for f in flights])
            finished = []
            for f, current in zip(flights, records, strict=True):
                if current is None or current.terminal:
                    finished.append(f.handle)
                    sched.remove(f.job.id)
                elif current.status != Status.RUNNING or current.worker != self.worker_id:
                    sched.remove(f.job.id)
            self.store.ack(self.model, finished)
        if sched.waiting:
            held, sched.waiting = [w.handle for w in sched.waiting], []
            sched.add(self._with_records(held, reread=True))
        self._renew()
        done = [f for f in sched.running.values() if f.done]
        if done:  # the outage came between their last step and their ack
            self._finish_succeeded(*done)
        if self._outage_started is not None:
            self._last_reclaim = time.monotonic() + self.settings.lease_seconds
            log.info(
                "redis reachable again",
                extra={
                    "worker": self.worker_id,
                    "outage_seconds": round(time.monotonic() - self._outage_started, 3),
                    "jobs_kept": self._held(),
                },
            )
        self._connected, self._outage_started, self._failures = True, None, 0

    def _leave(self) -> None:
        """Leave the live-worker list; with Redis down, the last heartbeat just ages out."""
        if self._news is not None:
            self._news.close()
        with contextlib.suppress(*RedisStore.UNREACHABLE):
            self.store.remove_worker(self.model, self.worker_id)

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_beat >= self.settings.heartbeat_seconds:
            self.store.heartbeat(self.model, self.worker_id, now, self.pace.close_window())
            self._last_beat = now
            self._renew()
            self._reclaim()

    def _renew(self) -> None:
        """Renew the lease on what this worker holds; let go of what another worker took over
        (this one went quiet past its lease): that worker runs it now, and acks it."""
        sched = self.scheduler
        held = [f.handle for f in sched.running.values()] + [w.handle for w in sched.waiting]
        lost = {c.entry_id for c in self.store.renew(self.model, self.worker_id, held)} if held else set()
        if lost:
            log.warning("lease lost; letting jobs go", extra={"count": len(lost), "worker": self.worker_id})
            sched.discard(lambda c: c.entry_id in lost)

    def _done_with(self, claimed: Claimed, job_id: str, finished: bool = False) -> None:
        """Ack the entry of a finished (or vanished) job. One that is not finished went back to
        the queue or to another worker meanwhile: acking would delete that worker's entry, so
        it is only let go here."""
        if not finished:
            current = self.store.get(job_id)
            if current is not None and not current.terminal:
                log.info("job left to its new holder", extra={"job_id": job_id, "worker": self.worker_id})
                return
        self.store.ack(self.model, [claimed])

    def _take_work(self) -> None:
        """Claim jobs until this worker holds a full batch of rows.

        Each read asks for as many entries as the free rows could hold at two rows a job
        (``claim_count``), so a worker never holds much more than it can run at the next step
        and other workers get the rest. An idle worker blocks for the first job, then takes
        what else is waiting (request-level batching also gathers for up to ``max_wait``).
        """
        # Read the announcements at every pass, claiming or not: left unread while the batch is
        # full they would pile up in this connection's buffers and in Valkey's. One read while
        # no rows are free is remembered until the next claim.
        if self._news is None or self._news.arrived():
            self._announced = True
        sched = self.scheduler
        if not sched.continuous and sched.running:
            return  # request-level batching: the next batch forms only once this one is done
        if sched.idle:
            count = claim_count(free_rows(self.policy, 0))
            got = self._claim(self.settings.poll_ms, count)
            if not got:
                return
            sched.add(got)
            started = time.monotonic()
            if len(got) < count:  # the queue had no more: newcomers will be announced
                self._queue_empty_at = started
                if self._news is not None:
                    self._news.arrived()  # what was announced so far is what this claim saw
                self._announced = False
            # Request-level batches gather for up to max_wait: whoever misses the start waits
            # for the whole batch. Continuous batching takes what is there and starts: a job
            # arriving a moment later joins at the next step. Poll rather than block: Redis
            # ends a blocking read that times out only on its clock tick (100 ms at hz 10).
            gather = self.settings.batching == "request"
            while gather and keep_gathering(self.policy, time.monotonic(), started, sched.rows_held()):
                more = self._claim(None)
                if more:
                    sched.add(more)
                else:
                    time.sleep(GATHER_POLL_SECONDS)
        if self._look_at_queue():
            self._observe(self.store.queued_evaluations(self.model))
            if not sched.backlog:  # as good as a claim that found the queue empty
                self._queue_empty_at, self._announced = time.monotonic(), False
        # With a batch running and the queue found empty, claim again once a submission is
        # announced (no round trip while none is), or after CLAIM_EVERY_SECONDS.
        while (free := sched.free_rows()) > 0:
            if (
                not sched.idle
                and time.monotonic() - self._queue_empty_at < CLAIM_EVERY_SECONDS
                and not self._announced
            ):
                break
            self._announced = False  # this claim sees every entry announced so far
            count = claim_count(free)
            more = self._claim(None, count)
            sched.add(more)
            if len(more) < count:
                self._queue_empty_at = time.monotonic()
                break

    def _look_at_queue(self) -> bool:
        """Adaptive batching, at the light-load budget with no row free: is it time to see
        whether jobs wait in the queue (a submission was announced, or CLAIM_EVERY_SECONDS
        passed)? Claims see it for free; a full batch does not claim."""
        sched = self.scheduler
        return (
            self.policy.adaptive
            and not sched.backlog
            and not sched.idle
            and sched.free_rows() == 0
            and (self._announced or time.monotonic() - self._queue_empty_at >= CLAIM_EVERY_SECONDS)
        )

    def _observe(self, queued_evaluations: int) -> None:
        """The queue as a claim or a look found it: adaptive batching's budget follows."""
        sched = self.scheduler
        if sched.observe_queue(queued_evaluations):
            self._metrics.batch_mode(sched.backlog, sched.budget)
            log.debug(
                "row budget",
                extra={"rows": sched.budget, "backlog": sched.backlog, "queued": queued_evaluations},
            )

    def _claim(self, block_ms: int | None, count: int = 1) -> list[tuple[Claimed, Job]]:
        """Up to ``count`` jobs with their records; entries whose job is gone or finished are
        acked. With ``block_ms``, an empty queue is asked again once a submission is announced
        within that time."""
        claim = self.store.claim_batch(self.model, self.worker_id, count)
        if not claim.entries and block_ms and self._news is not None and self._news.wait(block_ms / 1000):
            claim = self.store.claim_batch(self.model, self.worker_id, count)
        self._observe(claim.queued_evaluations)
        return self._with_records(claim.entries)

    def _with_records(self, claimed: list[Claimed], reread: bool = False) -> list[tuple[Claimed, Job]]:
        """The entries with their records: a claim carries them, a reclaim (or ``reread``,
        after an outage, when the claim's copies may be stale) reads them."""
        if not reread and all(c.record is not None for c in claimed):
            jobs: list[Job | None] = [c.record for c in claimed]
        else:
            jobs = self.store.get_many([c.job_id for c in claimed])
        out, stale = [], []
        for c, job in zip(claimed, jobs, strict=True):
            if job is None:  # its record is gone
                stale.append(c)
            elif job.terminal:
                stale.append(c)  # cancelled, expired, or finished before a crash
            else:
                out.append((c, job))
        self.store.ack(self.model, stale)
        return out

    def _reclaim(self, force: bool = False) -> bool:
        """Take over entries another worker holds past its lease (it died). True if any."""
        if self.stop.is_set():  # draining: take on nothing new
            return False
        now = time.monotonic()
        if not force and now - self._last_reclaim < self.settings.lease_seconds / 3:
            return False
        self._last_reclaim = now
        claimed = self.store.reclaim(self.model, self.worker_id, int(self.settings.lease_seconds * 1000))
        if claimed:
            log.warning("reclaimed jobs", extra={"count": len(claimed), "worker": self.worker_id})
            self._metrics.reclaimed(len(claimed))
        self.scheduler.add(self._with_records(claimed))
        return bool(claimed)

    def _admit(self) -> None:
        joining = self.scheduler.schedule()
        now = time.time()
        plain: list[tuple[Claimed, Job]] = []
        for w in joining:
            if self._plain_start(w.job, now):
                plain.append((w.handle, w.job))
            else:  # dead letters, expiries, reclaimed jobs: one at a time
                self._start(w.handle, w.job)
        # The common case, queued -> running, for every joining job in one round trip.
        running = [transition(j, Status.RUNNING, now, worker=self.worker_id) for _, j in plain]
        saved = self.store.save_transitions([(j, r) for (_, j), r in zip(plain, running, strict=True)])
        started = []
        for (claimed, job), run, ok in zip(plain, running, saved, strict=True):
            if ok:
                started.append((claimed, run))
            else:
                self._done_with(claimed, job.id)
        self._begin(*started)

    def _plain_start(self, job: Job, now: float) -> bool:
        """A queued job with attempts left and time before its deadline: it just starts."""
        return (
            job.status == Status.QUEUED
            and job.attempts < self.settings.max_attempts
            and not job.past_deadline(now)
        )

    def _start(self, claimed: Claimed, job: Job) -> None:
        now = time.time()
        if job.attempts >= self.settings.max_attempts:  # it took down or failed every worker so far
            self._dead_letter(claimed, job)
            return
        if job.past_deadline(now):  # too late already: spend no denoiser time on it
            self._done_with(claimed, job.id, finished=self._expire(job, now))
            return
        if job.status == Status.RUNNING:  # reclaimed from a dead worker: back through queued
            if job.worker != self.worker_id and self.store.renew(self.model, self.worker_id, [claimed]):
                # A stale delivery: this worker was paused past its lease after claiming the
                # entry, and another worker reclaimed it and runs the job now. Let it go.
                log.info("stale delivery let go", extra={"job_id": job.id, "worker": self.worker_id})
                return
            requeued = transition(job, Status.QUEUED, now)
            if not self.store.save_transition(job, requeued):
                self._done_with(claimed, job.id)
                return
            log.info("job state", extra={"job_id": job.id, "status": "queued", "reason": "reclaimed"})
            job = requeued
        running = transition(job, Status.RUNNING, now, worker=self.worker_id)
        if not self.store.save_transition(job, running):
            self._done_with(claimed, job.id)
            return
        self._begin((claimed, running))

    def _begin(self, *jobs: tuple[Claimed, Job]) -> None:
        """Jobs now recorded as running join the in-flight set with their first rows; the
        prompts of all of them go through the text encoder in one call. A job that does not
        fit the model fails alone, and so does one whose prompt the encoder cannot take."""
        fitting: list[tuple[Claimed, Job, tuple[int, int, int]]] = []
        for claimed, running in jobs:
            self._metrics.started(running)
            try:
                get_plan(self.manifest.schedule.to_config(), running.request.sampler, running.request.steps)
                fitting.append((claimed, running, sample_shape(running.request, self.manifest)))
            except ValueError as e:
                self._finish_failed(Flight(running, claimed, []), ErrorType.INVALID_REQUEST, str(e))
        try:
            conditions: list[Condition | Exception] = list(
                self._conditions([j.request for _, j, _ in fitting])
            )
        except Exception:  # one job's prompt, or the encoder: find out job by job
            conditions = []
            for _, job, _ in fitting:
                try:
                    conditions.extend(self._conditions([job.request]))
                except Exception as e:
                    conditions.append(e)
        for (claimed, running, shape), condition in zip(fitting, conditions, strict=True):
            if isinstance(condition, Exception):
                if isinstance(condition, PromptError):
                    kind, message = ErrorType.INVALID_REQUEST, str(condition)
                else:
                    log.error("text encoder call failed", exc_info=condition)
                    kind, message = (
                        ErrorType.INFERENCE_ERROR,
                        f"text encoder failed: {type(condition).__name__}",
                    )
                self._finish_failed(Flight(running, claimed, []), kind, message)
                continue
            req = running.request
            plan = get_plan(self.manifest.schedule.to_config(), req.sampler, req.steps)
            rows = [
                start_row(plan, image_seed(req.seed, i), condition, req.guidance_scale, shape)
                for i in range(req.num_images)
            ]
            self.scheduler.start(claimed, running, rows)
            log.info("job state", extra={"job_id": running.id, "status": "running", "worker": self.worker_id})

    def _conditions(self, requests: list[JobRequest]) -> list[Condition]:
        """Each job's condition: its class label, or its prompt's and negative prompt's hidden
        states (a missing negative prompt is the empty one, as in diffusers' pipelines)."""
        m = self.manifest
        if self.encoder is None:
            return [Condition.for_class(r.class_label, m.unconditional_class) for r in requests]
        texts = [t for r in requests for t in (r.prompt or "", r.negative_prompt or "")]
        stats = self.encoder.component.stats
        calls, seconds = stats.calls, stats.seconds
        states = self.encoder.encode(texts) if texts else []
        if stats.calls > calls:  # not every prompt was cached
            self._metrics.stage_call(TEXT_ENCODER, stats.seconds - seconds)
        return [Condition.for_text(states[2 * i], states[2 * i + 1]) for i in range(len(requests))]

    def _dead_letter(self, claimed: Claimed, job: Job) -> None:
        """Park a job delivered ``max_attempts`` times without finishing: it fails, the others go on."""
        message = f"gave up after {job.attempts} attempts; the job is kept in the dead-letter stream"
        failed = transition(
            job, Status.FAILED, time.time(), error=JobError(ErrorType.MAX_ATTEMPTS_EXCEEDED, message)
        )
        parked = self.store.save_transition(job, failed)
        if parked:
            self.store.dead_letter(self.model, job.id, job.attempts)
            self._metrics.dead_lettered()
            self._metrics.finished_job(failed)
            log.warning(
                "job state",
                extra={
                    "job_id": job.id,
                    "status": "failed",
                    "error_type": ErrorType.MAX_ATTEMPTS_EXCEEDED.value,
                },
            )
        self._done_with(claimed, job.id, finished=parked)

    @property
    def _metrics(self) -> WorkerMetrics:
        assert self.metrics is not None
        return self.metrics

    def _report_in_flight(self) -> None:
        running = self.scheduler.running.values()
        self._metrics.in_flight(len(running), sum(len(f.rows) for f in running))

    def _expire(self, job: Job, now: float) -> bool:
        expired = expire(job, now)
        if not self.store.save_transition(job, expired):
            return False
        self._metrics.finished_job(expired)
        log.info("job state", extra={"job_id": job.id, "status": "expired"})
        return True

    def _drop_expired(self) -> None:
        """Jobs whose deadline passed mid-run stop here (the gateway may have expired them first)."""
        now = time.time()
        for job_id, flight in list(self.scheduler.running.items()):
            if flight.job.past_deadline(now) and not flight.done:  # a finished one is stored
                self.scheduler.remove(job_id)
                self._done_with(flight.handle, job_id, finished=self._expire(flight.job, now))

    def _drop_cancelled(self) -> None:
        """Jobs whose cancel was requested (the last progress write said so) stop here."""
        flagged, self._cancel_flags = self._cancel_flags & self.scheduler.running.keys(), set()
        for job_id in flagged:
            flight = self.scheduler.remove(job_id)
            assert flight is not None  # flagged only running jobs
            current = self.store.get(job_id) or flight.job
            if not current.terminal:
                cancelled = transition(current, Status.CANCELLED, time.time())
                if self.store.save_transition(current, cancelled):
                    self._metrics.finished_job(cancelled)
                    log.info("job state", extra={"job_id": job_id, "status": "cancelled"})
            self._done_with(flight.handle, job_id)

    def _step(self) -> None:
        """One step: the scheduler's batch, one denoiser call per sample shape, the update.

        With ``overlap_host_work`` the calls run on the denoiser thread (onnxruntime lets go
        of the GIL), and meanwhile this thread writes progress and stores the jobs the step
        before finished (decoding, PNGs, results, acks): the engine does not wait for Redis
        round trips. Finished jobs stay in the running set until stored, so an outage in
        between leaves them to ``_resume``; the call's own outcome is always applied.
        """
        started = time.perf_counter()
        batch = self.scheduler.batch()
        self.pace.step_started(started, sum(2 if r.guided else 1 for g in batch.groups for r in g))
        stats = self.engine.stats
        rows_before, seconds_before = stats.rows, stats.seconds
        if not batch.groups:  # only finished jobs left to store
            self._store_finished()
            return
        fault: BaseException | None = None
        if self._calls is None:
            ran, outputs, failed = self._denoise(batch)
        else:
            pending = self._calls.submit(self._denoise, batch)
            try:
                self._write_progress()
                self._store_finished()
            except BaseException as e:  # raised once the call's rows are kept, below
                fault = e
            ran, outputs, failed = pending.result()
        # The rows one step on, whatever Redis did meanwhile: their generators have drawn this
        # step's noise, so running the step again would give other images for the same seeds.
        self.scheduler.update(ran, outputs)
        if fault is not None:
            raise fault
        for job_id, message in failed.items():
            if (flight := self.scheduler.running.get(job_id)) is not None:
                self._finish_failed(flight, ErrorType.INFERENCE_ERROR, message)
        if self._calls is None:
            self._write_progress()
            self._store_finished()
        self._metrics.step(
            batch.rows,
            stats.rows - rows_before,
            stats.seconds - seconds_before,
            time.perf_counter() - started,
        )

    def _denoise(self, batch: Batch) -> tuple[Batch, list[list[RowState]], dict[str, str]]:
        """The batch's denoiser calls, one per sample shape: the groups whose call went
        through, their rows one step on, and a failure message for each job of a failed call
        (the model failed: that call's jobs fail, the others go on). No Redis: this may run
        on the denoiser thread."""
        prediction_type = self.manifest.schedule.prediction_type
        ran = Batch([], [])
        outputs: list[list[RowState]] = []
        failed: dict[str, str] = {}
        for group, slots in zip(batch.groups, batch.slots, strict=True):
            try:
                outputs.append(denoise_step(group, self.engine.run, prediction_type))
            except Exception as e:
                log.exception("denoiser call failed")
                failed |= {job_id: f"denoiser call failed: {type(e).__name__}" for job_id, _ in slots}
                continue
            ran.groups.append(group)
            ran.slots.append(slots)
        return ran, outputs, failed

    def _write_progress(self) -> None:
        """The stepping jobs' steps (at most every ``progress_interval_ms``, and at every step
        for the jobs an event stream watches), and with them the cancels requested
        (``_drop_cancelled`` acts on them) and the watches."""
        stepping = [f for f in self.scheduler.running.values() if not f.done]
        now = time.monotonic()
        due = now - self._last_progress >= self.settings.progress_interval_ms / 1000
        if not due:
            stepping = [f for f in stepping if f.job.id in self._watched]
        if not stepping:
            return
        steps = {f.job.id: f.step for f in stepping}
        flags = self.store.set_progress(steps, time.time())
        self._cancel_flags |= flags.cancelled
        self._watched = (self._watched & self.scheduler.running.keys()) - steps.keys() | flags.watched
        if due:
            self._last_progress = now

    def _store_finished(self) -> None:
        if done := self.scheduler.finished():
            self._finish_succeeded(*done)

    def _finish_succeeded(self, *flights: Flight) -> None:
        """Images with the status, then the ack: each job succeeds once, with one set of images.

        Two workers can hold the same job (one paused past its lease, or cut off from Redis,
        while the other reclaimed it). Images and status are written in one step, and only
        while the job is running, so the first to finish wins and the other changes nothing.
        A crash after that and before the ack is harmless: whoever gets the entry next finds
        the job terminal and acks it. All the jobs finishing at one step share one round trip
        for their results and one for their acks.
        """
        pixels = self._pixels(flights)
        flights = tuple(f for f in flights if f.job.id in pixels)
        now = time.time()
        results = []
        for f in flights:
            pngs = [encode_png(p) for p in pixels[f.job.id]]
            done = transition(
                f.job, Status.SUCCEEDED, now, step=f.step, image_count=len(pngs), worker=self.worker_id
            )
            results.append((f.job, done, pngs))
        stored = self.store.store_results(results)
        for f, (_, done, _), ok in zip(flights, results, stored, strict=True):
            if ok:
                self._metrics.finished_job(done)
                log.info("job state", extra={"job_id": f.job.id, "status": "succeeded"})
            else:  # finished by another worker, cancelled at the last step, expired or gone
                log.info("result not stored", extra={"job_id": f.job.id, "worker": self.worker_id})
        self.failpoints.hit(failpoints.AFTER_STORE_BEFORE_ACK)
        self.store.ack(self.model, [f.handle for f, ok in zip(flights, stored, strict=True) if ok])
        for f, ok in zip(flights, stored, strict=True):
            if not ok:
                self._done_with(f.handle, f.job.id)
            self.scheduler.remove(f.job.id)

    def _pixels(self, flights: tuple[Flight, ...]) -> dict[str, list[np.ndarray]]:
        """Each finished job's images as pixels: one decoder call per image size, over the
        jobs finishing together. A failed call fails its jobs; the others go on."""
        by_shape: dict[tuple[int, ...], list[Flight]] = {}
        for f in flights:
            by_shape.setdefault(f.rows[0].shape, []).append(f)
        vae = self.decoder.component
        seconds = vae.stats.seconds if vae is not None else 0.0
        out: dict[str, list[np.ndarray]] = {}
        for group in by_shape.values():
            try:
                pixels = self.decoder.pixels([r.x for f in group for r in f.rows])
            except Exception as e:  # the VAE decoder failed: these jobs fail
                log.exception("decoder call failed")
                for f in group:
                    self._finish_failed(
                        f, ErrorType.INFERENCE_ERROR, f"decoder call failed: {type(e).__name__}"
                    )
                continue
            k = 0
            for f in group:
                out[f.job.id], k = pixels[k : k + len(f.rows)], k + len(f.rows)
        if vae is not None and vae.stats.seconds > seconds:
            self._metrics.stage_call(VAE_DECODER, vae.stats.seconds - seconds)
        return out

    def _finish_failed(self, f: Flight, kind: ErrorType, message: str) -> None:
        current = self.store.get(f.job.id) or f.job
        finished = current.terminal
        if not finished:
            failed = transition(current, Status.FAILED, time.time(), error=JobError(kind, message))
            finished = self.store.save_transition(current, failed)
            if finished:
                self._metrics.finished_job(failed)
                log.info(
                    "job state", extra={"job_id": f.job.id, "status": "failed", "error_type": kind.value}
                )
        self._done_with(f.handle, f.job.id, finished=finished)
        self.scheduler.remove(f.job.id)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT: stop taking work, finish what was taken, exit."""

    def handle(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signum, "worker": worker.worker_id})
        worker.stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
