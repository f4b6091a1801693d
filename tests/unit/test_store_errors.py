"""Every Redis error is the store's fault, translated in one place (``diffq.store.fault``): which
exception becomes which 503, which ones are an outage and which a refusal, and what is logged.
The bundled client's submission retries. No Redis needed."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
import redis
from redis import exceptions as rexc

from diffq.client import post_job, retry_after
from diffq.errors import Unavailable
from diffq.jobs import Job, JobRequest, Status, new_job_id, transition
from diffq.store import RedisStore, fault
from diffq.store import faults as store_module
from diffq.store.faults import unavailable as _unavailable
from diffq.store.lua import Call, run_many
from diffq.store.records import TRANSITION


@pytest.mark.parametrize(
    ("error", "reason", "words", "retry", "transient", "maybe_applied"),
    [
        (
            rexc.ConnectionError("Error 111 connecting to 127.0.0.1:6379."),
            "unreachable",
            "unreachable",
            1,
            True,
            True,
        ),
        (rexc.TimeoutError("Timeout reading from socket"), "timeout", "did not answer", 1, True, True),
        (
            rexc.BusyLoadingError("Valkey is loading the dataset in memory"),
            "loading",
            "loading",
            1,
            True,
            False,
        ),
        (
            rexc.AuthenticationError("invalid username-password pair"),
            "refused",
            "credentials",
            5,
            False,
            False,
        ),
        (
            rexc.OutOfMemoryError(
                "command not allowed when used memory > 'maxmemory'. script: on @user_script:1."
            ),
            "full",
            "full",
            5,
            False,
            False,
        ),
        (
            rexc.ReadOnlyError("You can't write against a read only replica."),
            "read_only",
            "read-only",
            1,
            False,
            False,
        ),
        (
            rexc.ResponseError("MISCONF Errors writing to the AOF file: No space left on device"),
            "cannot_persist",
            "disk",
            5,
            False,
            False,
        ),
        (
            rexc.ResponseError(
                "Command # 1 (EVALSHA ab 2) of pipeline caused error: BUSY Valkey is busy running a script"
            ),
            "busy",
            "busy",
            1,
            False,
            False,
        ),
        (
            rexc.TryAgainError("Multiple keys request during rehashing of slot"),
            "busy",
            "busy",
            1,
            False,
            False,
        ),
        (rexc.MasterDownError("Link with MASTER is down"), "busy", "busy", 1, False, False),
        (
            rexc.ResponseError("user_script:12: Script attempted to access nonexistent global variable 'x'"),
            "refused",
            "refused",
            5,
            False,
            False,
        ),
        (
            rexc.NoPermissionError("this user has no permissions to run the 'xadd' command"),
            "refused",
            "refused",
            5,
            False,
            False,
        ),
        (rexc.DataError("Invalid input of type: 'NoneType'"), "error", "failed", 5, False, False),
    ],
)
def test_each_redis_error_is_a_503_saying_what_the_store_does(
    error: redis.RedisError, reason: str, words: str, retry: float, transient: bool, maybe_applied: bool
) -> None:
    f = fault(error)
    assert (f.reason, f.retry_after, f.transient, f.maybe_applied) == (
        reason,
        retry,
        transient,
        maybe_applied,
    )
    assert words in f.message and "job store" in f.message
    assert f.error == type(error).__name__ and f.detail == str(error)
    u = f.unavailable(job_id="j")
    assert (u.status, u.type, u.retryable, u.retry_after) == (503, "unavailable", True, retry)
    assert u.details == {"reason": reason, "job_id": "j"}
    assert isinstance(error, RedisStore.UNREACHABLE), "workers back off on it"


def test_the_unavailable_raised_for_an_error_keeps_its_kind() -> None:
    with pytest.raises(Unavailable) as info, _unavailable():
        raise rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert info.value.details == {"reason": "full"} and info.value.retry_after == 5
    assert isinstance(info.value.__cause__, rexc.OutOfMemoryError)
    again = fault(info.value)  # what a worker's back-off sees
    assert (again.reason, again.error) == ("full", "OutOfMemoryError")
    assert fault(Unavailable("no cause")).reason == "error"


def test_refusals_are_logged_with_their_type_and_message_outages_are_not(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_refusals_logged", {})
    caplog.set_level(logging.INFO, logger="diffq.store")
    for error in (rexc.ConnectionError("refused"), rexc.TimeoutError("slow")):
        with pytest.raises(Unavailable), _unavailable():
            raise error
    assert not caplog.records, "an outage is the caller's to report, once"
    bug = rexc.ResponseError("user_script:3: attempt to compare nil with number script: 4f1a")
    for _ in range(3):  # a flood of the same refusal: one line per interval
        with pytest.raises(Unavailable), _unavailable():
            raise bug
    (line,) = caplog.records
    assert line.levelno == logging.WARNING and line.getMessage() == "redis refused a command"
    assert (line.error, line.detail, line.reason) == ("ResponseError", str(bug), "refused")  # type: ignore[attr-defined]


class _FakePipeline:
    def __init__(self, owner: _FakeRedis) -> None:
        self.owner, self.calls = owner, 0

    def evalsha(self, *args: Any) -> None:
        self.calls += 1

    def execute(self) -> list[Any]:
        self.owner.executes += 1
        if not self.owner.loaded:
            raise rexc.NoScriptError("No matching script. Please use EVAL.")
        if self.owner.fail_with is not None:
            raise self.owner.fail_with
        return ["OK"] * self.calls


class _FakeRedis:
    """Just what ``run_many`` uses: pipelines of EVALSHA, and SCRIPT LOAD."""

    def __init__(self, loaded: bool, fail_with: Exception | None = None) -> None:
        self.loaded, self.fail_with, self.executes = loaded, fail_with, 0

    def pipeline(self, transaction: bool = False) -> _FakePipeline:
        return _FakePipeline(self)

    def script_load(self, script: str) -> None:
        self.loaded = True


def test_a_lost_script_cache_is_reloaded_not_reported() -> None:
    fake = _FakeRedis(loaded=False)
    calls = [Call(TRANSITION, ["k"], ["a"]), Call(TRANSITION, ["k2"], ["b"])]
    assert run_many(fake, calls) == ["OK", "OK"]
    assert fake.executes == 2  # NOSCRIPT, then again once loaded


def test_a_refused_script_call_is_a_503_not_a_500() -> None:
    store = RedisStore("redis://127.0.0.1:1/0")
    store._r = _FakeRedis(loaded=True, fail_with=rexc.OutOfMemoryError("command not allowed"))
    req = JobRequest("m", 1, 1, 4, "ddim", 1.0, 1)
    job = Job(id=new_job_id(), request=req, status=Status.QUEUED, created_at=time.time())
    with pytest.raises(Unavailable) as info:
        store.save_transitions([(job, transition(job, Status.CANCELLED, time.time()))])
    assert info.value.details == {"reason": "full"}


# -- the bundled client -------------------------------------------------------------------------


def _client(answers: list[httpx.Response], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    return httpx.Client(base_url="http://gateway", transport=httpx.MockTransport(handler))


def _unavailable_503(seconds: str) -> httpx.Response:
    body = {
        "error": {"type": "unavailable", "message": "the job store is full", "details": {"reason": "full"}}
    }
    return httpx.Response(503, json=body, headers={"Retry-After": seconds})


def test_the_client_retries_a_503_after_its_retry_after_with_the_same_idempotency_key() -> None:
    seen: list[httpx.Request] = []
    slept: list[float] = []
    answers = [_unavailable_503("2"), _unavailable_503("7"), httpx.Response(202, json={"id": "a"})]
    with _client(answers, seen) as client:
        r = post_job(client, {"class_label": 1}, sleep=slept.append)
    assert r.status_code == 202 and slept == [2.0, 7.0]
    keys = {req.headers["Idempotency-Key"] for req in seen}
    assert len(seen) == 3 and len(keys) == 1, "every retry names the same submission"


def test_the_client_uses_a_fresh_key_per_submission_and_gives_up_after_a_few_tries() -> None:
    seen: list[httpx.Request] = []
    with _client([_unavailable_503("1") for _ in range(8)], seen) as client:
        last = post_job(client, {}, attempts=3, sleep=lambda _: None)
        post_job(client, {}, attempts=1, sleep=lambda _: None)
    assert last.status_code == 503 and len(seen) == 4
    assert seen[0].headers["Idempotency-Key"] == seen[2].headers["Idempotency-Key"]
    assert seen[3].headers["Idempotency-Key"] != seen[0].headers["Idempotency-Key"]


def test_the_client_does_not_retry_what_a_retry_cannot_fix() -> None:
    seen: list[httpx.Request] = []
    with _client([httpx.Response(422, json={"error": {"type": "validation_error"}})], seen) as client:
        assert post_job(client, {}, sleep=lambda _: None).status_code == 422
    assert len(seen) == 1


def test_retry_after_is_read_capped_and_defaulted() -> None:
    assert retry_after(httpx.Response(503, headers={"Retry-After": "3"})) == 3
    assert retry_after(httpx.Response(503, headers={"Retry-After": "3600"})) == 30
    assert retry_after(httpx.Response(503)) == 1
    assert retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})) == 1
