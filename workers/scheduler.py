"""The worker's scheduling core: which jobs wait, which run, and what the next step computes.

Pure: no Redis, no clock, no model. The worker loop (``workers.worker``) is the I/O driver
around it, one engine step being three calls as in vLLM's engine core::

    joining = scheduler.schedule()        # who joins the batch now: priority order, free rows
    ...                                   # (driver) record them running, encode prompts, start rows
    batch = scheduler.batch()             # every running row, grouped by sample shape
    outputs = [execute(g) for g in batch.groups]   # one denoiser call per group
    step = scheduler.update(batch, outputs)        # rows one step on: finished and continuing jobs

The scheduler owns the waiting list (claimed, not started) and the running set; the driver
attaches its own handle to each job (the worker's queue entry, nothing in the bench).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from diffq.jobs import PRIORITIES, Job
from sampling.denoise import RowState
from workers.batching import BatchPolicy, admit, free_rows, is_backlog, steps_until_room

H = TypeVar("H")  # the driver's handle on a job


@dataclass
class Waiting(Generic[H]):
    """A claimed job that has not started."""

    handle: H
    job: Job


@dataclass
class InFlight(Generic[H]):
    """A running job and its images' rows."""

    job: Job
    handle: H
    rows: list[RowState]
    rows_per_step: int = field(init=False)  # the job's denoiser rows per step, read once
    done: bool = field(init=False)  # every image done; kept by ``Scheduler.update``

    def __post_init__(self) -> None:
        self.rows_per_step = self.job.request.rows_per_step
        self.done = all(r.done for r in self.rows)

    @property
    def step(self) -> int:
        return min(r.step for r in self.rows)

    @property
    def steps_left(self) -> int:
        return max((r.plan.num_steps - r.step for r in self.rows), default=0)


@dataclass(frozen=True)
class Batch:
    """One step's work: ``groups[g]`` are rows of one sample shape (one denoiser call each),
    ``slots[g][k]`` says whose row ``groups[g][k]`` is: (job id, image index)."""

    groups: list[list[RowState]]
    slots: list[list[tuple[str, int]]]

    @property
    def rows(self) -> int:
        return sum(len(g) for g in self.groups)


@dataclass(frozen=True)
class StepResult(Generic[H]):
    finished: list[InFlight[H]]  # every image done: decode, store, ack
    continuing: list[InFlight[H]]


@dataclass
class Scheduler(Generic[H]):
    """Waiting and running jobs, admission into the batch, batch assembly and the split of a
    step's results. ``continuous=False`` is request-level batching: a batch forms only once
    the last one is done."""

    policy: BatchPolicy
    continuous: bool = True
    waiting: list[Waiting[H]] = field(default_factory=list)
    running: dict[str, InFlight[H]] = field(default_factory=dict)
    backlog: bool = False  # work waited in the queue at the last look: the throughput budget

    # ---- load --------------------------------------------------------------------------------
    def observe_queue(self, queued_evaluations: int) -> bool:
        """What the driver's last look at the queue found (jobs not claimed by any worker, as
        denoiser evaluations), before it adds what that claim took. Once the work waiting
        there and here is a backlog (``workers.batching.is_backlog``), the row budget is the
        policy's backlog size until nothing waits; then new jobs join only below the
        light-load tick again, and the batch shrinks back to it as its jobs finish. True when
        the mode changed."""
        waiting = queued_evaluations + sum(w.job.request.evaluations for w in self.waiting)
        if waiting <= 0 or not self.policy.adaptive:
            backlog = False
        elif self.backlog:
            backlog = True  # until nothing waits
        else:
            stepping = [(f.rows_per_step, f.steps_left) for f in self.running.values() if not f.done]
            head = min(self.waiting, key=_priority, default=None)
            rows = head.job.request.rows_per_step if head is not None else 1
            backlog = is_backlog(
                self.policy,
                waiting,
                sum(r * left for r, left in stepping),
                steps_until_room(self.policy.max_rows, stepping, rows),
            )
        changed, self.backlog = backlog != self.backlog, backlog
        return changed

    @property
    def budget(self) -> int:
        """Rows per step the running set may grow to now."""
        return self.policy.rows(self.backlog)

    # ---- sizes ---------------------------------------------------------------------------
    def rows_running(self) -> int:
        """Denoiser rows per step of the running jobs still stepping (guided images count
        twice); a finished job waiting to be stored takes none."""
        return sum(f.rows_per_step for f in self.running.values() if not f.done)

    def rows_held(self) -> int:
        """Rows of every job held, running or waiting: what claims are sized against."""
        return self.rows_running() + sum(w.job.request.rows_per_step for w in self.waiting)

    def free_rows(self) -> int:
        return free_rows(self.policy, self.rows_held(), self.backlog)

    @property
    def held(self) -> int:
        return len(self.running) + len(self.waiting)

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # ---- the waiting list ------------------------------------------------------------------
    def add(self, claimed: Iterable[tuple[H, Job]]) -> None:
        """Claimed jobs join the waiting list in claim order."""
        self.waiting.extend(Waiting(h, j) for h, j in claimed)

    def schedule(self) -> list[Waiting[H]]:
        """The waiting jobs that join the batch now, taken off the waiting list.

        High before normal before low, claim order within a priority; first come, first
        served by rows (``workers.batching.admit``), so a big job is never starved by small
        ones behind it. Request-level batching admits nothing while a batch runs.
        """
        if not self.continuous and self.running:
            return []
        self.waiting.sort(key=_priority)  # stable
        rows = [w.job.request.rows_per_step for w in self.waiting]
        n = admit(self.policy, self.rows_running(), rows, self.backlog)
        joining, self.waiting = self.waiting[:n], self.waiting[n:]
        return joining

    def start(self, handle: H, job: Job, rows: list[RowState]) -> InFlight[H]:
        """A scheduled job, now recorded as running, runs from the next batch on."""
        flight = InFlight(job, handle, rows)
        self.running[job.id] = flight
        return flight

    # ---- one step --------------------------------------------------------------------------
    def batch(self) -> Batch:
        """Every row of the running jobs still stepping, grouped by sample shape: rows of
        different shapes never share a call. Groups in order of first appearance, rows in job
        order within a group. Finished jobs (``finished``) are left out."""
        groups: dict[tuple[int, ...], tuple[list[RowState], list[tuple[str, int]]]] = {}
        for job_id, flight in self.running.items():
            if flight.done:
                continue
            for i, row in enumerate(flight.rows):
                rows, slots = groups.setdefault(row.shape, ([], []))
                rows.append(row)
                slots.append((job_id, i))
        return Batch([g[0] for g in groups.values()], [g[1] for g in groups.values()])

    def update(self, batch: Batch, outputs: Sequence[Sequence[RowState]]) -> StepResult[H]:
        """Each job's rows one step on; which jobs are now done and which go on. Finished
        jobs stay in the running set until the driver has stored them (``remove``)."""
        if len(outputs) != len(batch.groups):
            raise ValueError(f"{len(outputs)} outputs for {len(batch.groups)} groups")
        stepped: set[str] = set()
        for slots, rows in zip(batch.slots, outputs, strict=True):
            for (job_id, i), row in zip(slots, rows, strict=True):
                flight = self.running.get(job_id)
                if flight is not None:  # a job dropped meanwhile leaves its rows behind
                    flight.rows[i] = row
                    stepped.add(job_id)
        flights = [self.running[j] for j in self.running if j in stepped]
        for f in flights:
            f.done = all(r.done for r in f.rows)
        return StepResult([f for f in flights if f.done], [f for f in flights if not f.done])

    def finished(self) -> list[InFlight[H]]:
        """Running jobs whose every image is done, waiting for the driver to store them."""
        return [f for f in self.running.values() if f.done]

    # ---- leaving -----------------------------------------------------------------------------
    def remove(self, job_id: str) -> InFlight[H] | None:
        """A running job leaves (finished, failed, cancelled, expired, taken over)."""
        return self.running.pop(job_id, None)

    def discard(self, lost: Callable[[H], bool]) -> int:
        """Let go of every held job whose handle ``lost`` says is no longer this worker's;
        returns how many went."""
        before = self.held
        self.running = {k: f for k, f in self.running.items() if not lost(f.handle)}
        self.waiting = [w for w in self.waiting if not lost(w.handle)]
        return before - self.held


def _priority(w: Waiting[H]) -> int:
    """A waiting job's place in admission order: high, normal, low."""
    return PRIORITIES.index(w.job.request.priority)
