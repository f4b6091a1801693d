"""`diffq serve`'s restart policy (pure, fake processes): it never gives up on a child that
keeps crashing, its back-off is capped and starts afresh once the child stayed up a while, a
child waits for Valkey before it starts, and only a settings error before a child ever came
up stops serve."""

from __future__ import annotations

import signal
import subprocess
from typing import cast

from diffq.exits import PROBE_PORT_EXIT
from diffq.serve import EXIT_CONFIG, STABLE_SECONDS, Child, backoff_delay, is_fatal, next_failures


class FakeProc:
    """Stands in for a Popen: ``code`` is what poll() answers (None while running)."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class Fakes:
    """A child's processes, newest last, and whether its probe passes."""

    def __init__(self) -> None:
        self.procs: list[FakeProc] = []
        self.ok = False

    def spawn(self) -> subprocess.Popen[bytes]:
        self.procs.append(FakeProc())
        return cast("subprocess.Popen[bytes]", self.procs[-1])

    def child(self, **kwargs: object) -> Child:
        return Child("gateway", self.spawn, lambda: self.ok, **kwargs)  # type: ignore[arg-type]


def test_only_a_settings_error_before_the_child_came_up_is_fatal() -> None:
    assert is_fatal(EXIT_CONFIG, came_up=False)
    assert not is_fatal(EXIT_CONFIG, came_up=True)  # it ran: whatever exits 2 later is a crash
    for code in (1, 3, PROBE_PORT_EXIT, -signal.SIGKILL, -signal.SIGSEGV, 0):
        assert not is_fatal(code, came_up=False), code
    assert not is_fatal(EXIT_CONFIG, came_up=False, fatal_exits=frozenset())  # Valkey's 2 is not ours


def test_a_child_that_never_comes_up_is_retried_for_ever_at_the_capped_delay() -> None:
    fakes = Fakes()
    child = fakes.child()
    now = 0.0
    for _ in range(200):  # a child that fails at start-up, slowly: never up, so never "stable"
        assert child.check(now, 0.5, 8.0) is None and fakes.procs[-1].code is None  # (re)started
        now += 2 * STABLE_SECONDS  # it runs a minute before failing; its probe never passed
        fakes.procs[-1].code = 1
        line = child.check(now, 0.5, 8.0)
        assert line is not None and line.startswith("gateway exited with 1; restarting in ")
        assert not child.fatal and not child.up
        now += child.history[-1]
    assert len(fakes.procs) == 200
    assert child.history[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert set(child.history[4:]) == {8.0} == {backoff_delay(child.failures, 0.5, 8.0)}


def test_the_backoff_starts_afresh_only_once_the_child_stayed_up_a_while() -> None:
    assert next_failures(3, up_seconds=STABLE_SECONDS) == 1
    assert next_failures(3, up_seconds=STABLE_SECONDS - 0.1) == 4
    fakes = Fakes()
    child = fakes.child()
    child.check(0.0, 1.0, 60.0)
    for at in (100.0, 200.0):  # long runs, never up: the count grows
        fakes.procs[-1].code = 1
        child.check(at, 1.0, 60.0)
        child.check(child.restart_at, 1.0, 60.0)
    assert child.failures == 2
    fakes.ok = True
    up_at = child.restart_at + 1
    assert child.check(up_at, 1.0, 60.0) == "gateway is up again"
    child.recheck("is waiting for Valkey")  # what it needs restarted: probed again ...
    assert not child.up and child.check(up_at + 20, 1.0, 60.0) == "gateway is up again" and child.up
    assert child.up_since == up_at  # ... but it has been up since it first came up
    fakes.procs[-1].code = -signal.SIGKILL
    line = child.check(up_at + STABLE_SECONDS, 1.0, 60.0)
    assert line == "gateway was killed by SIGKILL; restarting in 1.0s" and child.failures == 1


def test_a_settings_error_at_start_stops_instead_of_restarting() -> None:
    fakes = Fakes()
    child = fakes.child()
    child.check(0.0, 1.0, 4.0)
    fakes.procs[-1].code = EXIT_CONFIG
    assert child.check(0.5, 1.0, 4.0) is None
    assert child.fatal and child.why == "exited with 2 before it came up" and child.history == []
    # The same status once it had come up is a crash like any other: restarted.
    fakes = Fakes()
    child = fakes.child()
    child.check(0.0, 1.0, 4.0)
    fakes.ok = True
    child.check(1.0, 1.0, 4.0)
    fakes.procs[-1].code = EXIT_CONFIG
    assert child.check(2.0, 1.0, 4.0) == "gateway exited with 2; restarting in 1.0s" and not child.fatal


def test_a_child_waits_for_what_it_needs_before_it_starts() -> None:
    fakes = Fakes()
    child = fakes.child()
    for at in (0.0, 5.0, 50.0):
        assert child.check(at, 1.0, 4.0, may_start=False) is None
    assert fakes.procs == [] and child.why == "is waiting for Valkey" and child.failures == 0
    child.check(51.0, 1.0, 4.0, may_start=True)
    assert len(fakes.procs) == 1 and child.why == "is starting"


def test_the_first_up_is_announced_once() -> None:
    fakes = Fakes()
    child = fakes.child(announce="embedded Valkey on 127.0.0.1:1 (data in var/valkey)")
    fakes.procs.clear()
    child.check(0.0, 1.0, 4.0)
    fakes.procs[-1].code = 1  # failed at its first start: retried, then announced when up
    assert child.check(0.1, 1.0, 4.0) == "gateway exited with 1; restarting in 1.0s"
    child.check(1.1, 1.0, 4.0)
    fakes.ok = True
    assert child.check(1.2, 1.0, 4.0) == "embedded Valkey on 127.0.0.1:1 (data in var/valkey)"
    fakes.procs[-1].code = 1
    child.check(2.0, 1.0, 4.0)
    child.check(10.0, 1.0, 4.0)
    assert child.check(10.1, 1.0, 4.0) == "gateway is up again"
