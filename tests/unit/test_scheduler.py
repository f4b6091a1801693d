"""The worker's pure scheduler: admission, batch assembly by shape and the split of a step's
results, with a stand-in denoiser (these tests are about scheduling) and no Redis."""

from __future__ import annotations

import numpy as np

from diffq.jobs import Job, JobRequest, Priority, Status
from sampling.denoise import Condition, RowState, denoise_step, start_row
from sampling.registry import get_plan
from sampling.schedule import ScheduleConfig
from workers.batching import BatchPolicy
from workers.scheduler import Scheduler

CONFIG = ScheduleConfig()


def job(job_id: str, images: int = 1, guidance: float = 1.0, priority: str = "normal", steps: int = 3) -> Job:
    request = JobRequest(
        model="m",
        class_label=1,
        num_images=images,
        steps=steps,
        sampler="ddim",
        guidance_scale=guidance,
        seed=7,
        priority=Priority(priority),
    )
    return Job(job_id, request, Status.QUEUED, created_at=0.0)


def rows_for(j: Job, shape: tuple[int, ...] = (1, 4, 4)) -> list[RowState]:
    plan = get_plan(CONFIG, j.request.sampler, j.request.steps)
    cond = Condition.for_class(j.request.class_label, 10)
    return [start_row(plan, i, cond, j.request.guidance_scale, shape) for i in range(j.request.num_images)]


def stand_in(sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
    return (0.5 * sample).astype(np.float32)


def started(s: Scheduler[str], *jobs: Job, shape: tuple[int, ...] = (1, 4, 4)) -> None:
    s.add((f"entry-{j.id}", j) for j in jobs)
    for w in s.schedule():
        s.start(w.handle, w.job, rows_for(w.job, shape))


def test_nothing_waiting_schedules_nothing() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(8, 0.0))
    assert s.schedule() == []
    assert s.idle
    assert s.batch().groups == []


def test_priority_order_then_claim_order() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(100, 0.0))
    s.add(
        [("a", job("a", priority="low")), ("b", job("b")), ("c", job("c", priority="high")), ("d", job("d"))]
    )
    assert [w.job.id for w in s.schedule()] == ["c", "b", "d", "a"]
    assert s.waiting == []


def test_admission_stops_at_the_first_job_that_does_not_fit() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(4, 0.0))
    # guided images take two rows each: 2 + 4 + 1 rows
    s.add([("a", job("a", guidance=3.0)), ("b", job("b", images=2, guidance=3.0)), ("c", job("c"))])
    assert s.rows_held() == 7
    assert [w.job.id for w in s.schedule()] == ["a"]  # b does not fit, and c may not pass it
    assert [w.job.id for w in s.waiting] == ["b", "c"]
    assert s.free_rows() == 0


def test_a_job_bigger_than_the_budget_runs_alone() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(2, 0.0))
    s.add([("a", job("a", images=3)), ("b", job("b"))])
    assert [w.job.id for w in s.schedule()] == ["a"]


def test_request_level_batching_admits_nothing_while_a_batch_runs() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(8, 0.0), continuous=False)
    started(s, job("a"))
    s.add([("b", job("b"))])
    assert s.schedule() == []
    continuous: Scheduler[str] = Scheduler(BatchPolicy(8, 0.0))
    started(continuous, job("a"))
    continuous.add([("b", job("b"))])
    assert [w.job.id for w in continuous.schedule()] == ["b"]


def test_rows_of_different_shapes_never_share_a_group() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(16, 0.0))
    started(s, job("a", images=2))
    started(s, job("b"), shape=(1, 8, 4))
    started(s, job("c"))
    batch = s.batch()
    assert [len(g) for g in batch.groups] == [3, 1]
    assert batch.slots == [[("a", 0), ("a", 1), ("c", 0)], [("b", 0)]]
    assert {g[0].shape for g in batch.groups} == {(1, 4, 4), (1, 8, 4)}
    assert batch.rows == 4


def test_update_splits_finished_from_continuing_jobs() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(16, 0.0))
    started(s, job("short", steps=1), job("long", steps=3, images=2))
    batch = s.batch()
    result = s.update(batch, [denoise_step(g, stand_in, "v_prediction") for g in batch.groups])
    assert [f.job.id for f in result.finished] == ["short"]
    assert [f.job.id for f in result.continuing] == ["long"]
    assert [r.step for r in s.running["long"].rows] == [1, 1]
    assert "short" in s.running  # stays until the driver has stored it
    assert s.remove("short") is not None and "short" not in s.running


def test_each_row_gets_its_own_output_back() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(16, 0.0))
    started(s, job("a", images=2))
    started(s, job("b"), shape=(1, 8, 4))
    batch = s.batch()
    expected = [denoise_step(g, stand_in, "v_prediction") for g in batch.groups]
    s.update(batch, expected)
    assert s.running["a"].rows[1].x.tobytes() == expected[0][1].x.tobytes()
    assert s.running["b"].rows[0].x.tobytes() == expected[1][0].x.tobytes()


def test_rows_of_a_job_removed_mid_step_are_dropped() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(16, 0.0))
    started(s, job("a"), job("b"))
    batch = s.batch()
    s.remove("a")  # cancelled while its rows were in the denoiser
    result = s.update(batch, [denoise_step(g, stand_in, "v_prediction") for g in batch.groups])
    assert [f.job.id for f in result.continuing] == ["b"]
    assert "a" not in s.running


def test_discard_lets_go_of_lost_handles_running_or_waiting() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(1, 0.0))
    started(s, job("a"))
    s.add([("entry-b", job("b")), ("entry-c", job("c"))])
    assert s.discard(lambda h: h in {"entry-a", "entry-c"}) == 2
    assert list(s.running) == [] and [w.job.id for w in s.waiting] == ["b"]


def test_a_backlog_grows_the_budget_and_an_empty_queue_shrinks_it_back() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(max_rows=2, max_wait_s=0.0, backlog_rows=6))
    started(s, job("a"), job("b"))
    assert s.budget == 2 and s.free_rows() == 0
    assert s.observe_queue(queued_evaluations=30)  # work waits: the budget grows
    assert s.backlog and s.budget == 6 and s.free_rows() == 4
    started(s, *(job(f"q{i}") for i in range(5)))  # 4 of 5 fit the backlog budget
    assert sorted(s.running) == ["a", "b", "q0", "q1", "q2", "q3"] and len(s.waiting) == 1
    assert not s.observe_queue(queued_evaluations=0)  # one claimed job still waits here: backlog
    s.waiting.clear()
    assert s.observe_queue(queued_evaluations=0)  # nothing waits anywhere: back to the tick
    assert not s.backlog and s.budget == 2 and s.free_rows() == 0  # 6 rows run on until done
    s.add([("late", job("late"))])
    for done in ("a", "b", "q0", "q1", "q2"):
        s.remove(done)
    assert [w.job.id for w in s.schedule()] == ["late"]  # 1 + 1 rows: within the tick again
    assert s.schedule() == []


def test_a_policy_without_a_backlog_size_never_switches() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(max_rows=4, max_wait_s=0.0))
    assert not s.observe_queue(queued_evaluations=1000)
    assert not s.backlog and s.budget == 4
    smaller: Scheduler[str] = Scheduler(BatchPolicy(max_rows=4, max_wait_s=0.0, backlog_rows=2))
    assert not smaller.observe_queue(queued_evaluations=1000) and smaller.budget == 4


def test_finished_jobs_wait_to_be_stored_outside_the_batch_and_the_budget() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(4, 0.0))
    short, long = job("short", steps=1), job("long", steps=3)
    started(s, short, long)
    batch = s.batch()
    step = s.update(batch, [denoise_step(g, stand_in, "epsilon") for g in batch.groups])
    assert [f.job.id for f in step.finished] == ["short"]
    assert [f.job.id for f in s.finished()] == ["short"]  # still held until the driver stores it
    assert s.rows_running() == 1 and s.free_rows() == 3  # its row is free for a newcomer
    assert [slot for slots in s.batch().slots for slot in slots] == [("long", 0)]  # not stepped again
    s.remove("short")
    assert s.finished() == []


def test_a_job_or_two_waiting_behind_a_busy_batch_is_no_backlog() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(max_rows=4, max_wait_s=0.0, backlog_rows=8, patience_steps=16))
    started(s, *(job(f"r{i}", steps=10) for i in range(4)))  # the tick full: 40 evaluations left
    assert s.free_rows() == 0
    assert not s.observe_queue(queued_evaluations=10)  # a 10-step job queued: room in 10 steps
    assert not s.backlog and s.budget == 4
    assert s.observe_queue(queued_evaluations=41)  # more waits than runs: a backlog
    assert s.backlog and s.budget == 8
    assert not s.observe_queue(queued_evaluations=1)  # once grown, it stays while anything waits
    assert s.observe_queue(queued_evaluations=0) and not s.backlog


def test_a_long_job_holding_the_tick_makes_short_ones_a_backlog() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(max_rows=2, max_wait_s=0.0, backlog_rows=8, patience_steps=5))
    started(s, job("long", guidance=3.0, steps=400))  # two rows: the whole tick, 400 steps
    assert s.free_rows() == 0
    # Four 4-step jobs wait (16 evaluations, far less than the long job's 800), but room at
    # the tick comes only when the long job ends: they would wait 400 steps.
    assert s.observe_queue(queued_evaluations=16)
    assert s.backlog and s.free_rows() == 6


def test_a_claimed_job_waiting_here_is_measured_by_its_own_rows() -> None:
    s: Scheduler[str] = Scheduler(BatchPolicy(max_rows=4, max_wait_s=0.0, backlog_rows=8, patience_steps=5))
    started(s, job("short", steps=2), job("long", images=3, steps=20))  # 1 + 3 rows: full
    s.add([("big", job("big", images=2, steps=2))])  # claimed, waiting: needs 2 rows, 4 evaluations
    # One row frees after 2 steps, the second only when the long job ends in 20: too long.
    assert s.observe_queue(queued_evaluations=0)
    assert s.backlog
