"""The worker's probes: live unless its loop stalls; ready only with the model loaded, Redis
answering and not draining."""

from __future__ import annotations

from workers.http import WorkerHealth


def test_live_while_loading_and_while_the_loop_turns() -> None:
    health = WorkerHealth(stall_seconds=10)
    assert health.live(now=1000.0)[0]  # no tick yet: still loading the model
    health.last_tick = lambda: 995.0
    assert health.live(now=1000.0)[0]
    assert health.live(now=1010.5) == (False, {"loop": False})


def test_ready_needs_model_redis_and_not_stopping() -> None:
    stopping = False
    health = WorkerHealth(stall_seconds=10, redis_ok=lambda: True, stopping=lambda: stopping)
    ok, checks = health.ready()
    assert not ok and checks["model"] is False
    health.loaded = True
    assert health.ready() == (True, {"model": True, "redis": True, "accepting": True})
    stopping = True
    assert health.ready()[0] is False
    stopping = False
    health.redis_ok = lambda: False
    assert health.ready() == (False, {"model": True, "redis": False, "accepting": True})
