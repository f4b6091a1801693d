"""The job state machine and request arithmetic (pure)."""

from __future__ import annotations

import pytest

from diffq.jobs import (
    SEED_MAX,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    Job,
    JobRequest,
    Status,
    image_seed,
    new_job_id,
    transition,
)

REQ = JobRequest("m", 3, 2, 8, "dpmpp_2m", 3.0, 5)


def queued() -> Job:
    return Job(id=new_job_id(), request=REQ, status=Status.QUEUED, created_at=100.0)


def test_happy_path_records_times_and_attempts() -> None:
    running = transition(queued(), Status.RUNNING, 101.5, worker="w1")
    assert running.started_at == 101.5 and running.attempts == 1 and running.worker == "w1"
    done = transition(running, Status.SUCCEEDED, 103.0, image_count=2)
    assert done.terminal and done.finished_at == 103.0
    assert (done.queue_seconds, done.run_seconds, done.total_seconds) == (1.5, 1.5, 3.0)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_are_final(terminal: Status) -> None:
    job = Job(id="x", request=REQ, status=terminal, created_at=0.0)
    for target in Status:
        with pytest.raises(InvalidTransition):
            transition(job, target, 1.0)


def test_queued_cannot_succeed_without_running() -> None:
    with pytest.raises(InvalidTransition, match="queued -> succeeded"):
        transition(queued(), Status.SUCCEEDED, 1.0)


def test_requeue_resets_progress_and_keeps_attempts() -> None:
    running = transition(queued(), Status.RUNNING, 1.0, worker="w1", step=3)
    again = transition(running, Status.QUEUED, 2.0)
    assert (again.started_at, again.step, again.worker, again.attempts) == (None, 0, None, 1)
    assert transition(again, Status.RUNNING, 3.0).attempts == 2


def test_only_active_states_move() -> None:
    assert {s for s, targets in TRANSITIONS.items() if targets} == {Status.QUEUED, Status.RUNNING}
    assert {s for s, targets in TRANSITIONS.items() if Status.SUCCEEDED in targets} == {Status.RUNNING}


def test_rows_and_work() -> None:
    assert REQ.guided and REQ.rows_per_step == 4 and REQ.evaluations == 32
    assert JobRequest("m", 3, 2, 8, "ddim", 1.0, 5).rows_per_step == 2
    assert JobRequest("m", None, 2, 8, "ddim", 3.0, 5).rows_per_step == 2
    assert JobRequest("m", 4, 2, 8, "ddim", 0.0, 5).rows_per_step == 2


def test_image_seeds_are_consecutive_and_wrap() -> None:
    assert [image_seed(7, i) for i in range(3)] == [7, 8, 9]
    assert image_seed(SEED_MAX, 1) == 0


def test_job_ids_are_128_bit_hex() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_request_round_trips() -> None:
    assert JobRequest.from_dict(REQ.to_dict()) == REQ
