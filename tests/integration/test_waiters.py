"""``Prefer: wait`` costs no store connection and cannot starve other keys: a real gateway
process on a real Valkey (no worker, so jobs stay queued until cancelled), every loop bounded.

Waiting requests are woken by one pub/sub subscription per gateway process; a key's waiters
are bounded (past it a submission is 429 ``too_many_waiters``, a read is answered without
waiting), and a wait outlives a Valkey restart.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from diffq.serve import free_port, start_valkey, wait_for_http
from diffq.store import RedisStore
from service.auth import hash_key
from service.metrics import GatewayMetrics
from service.waiters import TooManyWaiters, Waiters
from tests.conftest import Stack, stack_env

ALICE, BOB = "dq_alice-waits-0123456789", "dq_bob-waits-9876543210"
KEYS = f"alice:{hash_key(ALICE)},bob:{hash_key(BOB)}"
JOB = {"class_label": 1, "steps": 4, "seed": 3}


def auth(key: str, wait: float | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    return headers | ({"Prefer": f"wait={wait:g}"} if wait is not None else {})


@pytest.fixture
def gateway(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    def start(**env: str) -> Stack:
        stack: Stack = make_stack(
            DIFFQ_AUTH="required", DIFFQ_API_KEYS=KEYS, DIFFQ_RATE_LIMIT_PER_SECOND="0", **env
        )
        stack.start_gateway()
        return stack

    return start


def submit(base: str, key: str) -> str:
    r = httpx.post(f"{base}/v1/jobs", json=JOB, headers=auth(key), timeout=10)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def subscribers(redis_url: str) -> int:
    """Connections subscribed to anything (channels or patterns)."""
    with redis.Redis.from_url(redis_url) as r:
        return sum(int(c["sub"]) + int(c["psub"]) > 0 for c in r.client_list())


def test_200_waiting_requests_of_one_key_cost_no_store_connections_and_others_are_served(
    gateway: Callable[..., Stack], valkey: str
) -> None:
    stack = gateway(DIFFQ_MAX_WAITERS_PER_KEY="256", DIFFQ_MAX_WAITERS="512")
    base = stack.base_url
    job_id = submit(base, ALICE)
    bobs = submit(base, BOB)

    async def run() -> tuple[list[httpx.Response], list[tuple[int, float]], int]:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as alice:
            waits = [
                asyncio.create_task(alice.get(f"/v1/jobs/{job_id}", headers=auth(ALICE, 5)))
                for _ in range(200)
            ]
            await asyncio.sleep(2.0)  # all 200 are parked on the job by now
            assert not any(t.done() for t in waits), [t.result().text for t in waits if t.done()][:3]
            held = subscribers(valkey)
            others: list[tuple[int, float]] = []
            async with httpx.AsyncClient(base_url=base, timeout=10) as bob:
                for i in range(20):  # Bob's plain submissions and reads, one after another
                    start = time.monotonic()
                    if i % 2:
                        r = await bob.post("/v1/jobs", json=JOB, headers=auth(BOB))
                    else:
                        r = await bob.get(f"/v1/jobs/{bobs}", headers=auth(BOB))
                    others.append((r.status_code, time.monotonic() - start))
            return list(await asyncio.gather(*waits)), others, held

    answers, others, held = asyncio.run(run())
    # One subscription wakes them all, where each waiting request held a pub/sub connection of
    # the pool (100: the 101st and every other request after it failed).
    assert held == 1, held
    assert [code for code, _ in others] == [200 if i % 2 == 0 else 202 for i in range(20)], others
    assert max(seconds for _, seconds in others) < 1.0, others
    assert [r.status_code for r in answers] == [200] * 200, {r.text for r in answers if r.status_code != 200}
    assert all(
        r.json()["status"] == "queued" and r.headers["Preference-Applied"] == "wait=5" for r in answers
    )
    assert "Traceback" not in stack.read_log("gateway")


def test_past_a_keys_bound_no_more_of_its_requests_wait_and_other_keys_still_do(
    gateway: Callable[..., Stack], valkey: str, prefix: str
) -> None:
    stack = gateway(DIFFQ_MAX_WAITERS_PER_KEY="4")
    base = stack.base_url
    job_id, bobs = submit(base, ALICE), submit(base, BOB)
    url = f"{base}/v1/jobs/{job_id}"
    parked: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: parked.append(httpx.get(url, headers=auth(ALICE, 3), timeout=10)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # Alice's four places are taken
    # A read past the bound is answered at once, the preference not applied (poll it).
    start = time.monotonic()
    over = httpx.get(url, headers=auth(ALICE, 3), timeout=5)
    assert over.status_code == 200 and over.json()["status"] == "queued", over.text
    assert "Preference-Applied" not in over.headers and time.monotonic() - start < 1
    # A submission that would wait is refused before it is queued: a retry cannot make two jobs.
    jobs_before = len(redis.Redis.from_url(valkey).keys(f"{prefix}:job:*"))
    refused = httpx.post(f"{base}/v1/jobs", json=JOB, headers=auth(ALICE, 3), timeout=5)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "too_many_waiters"
    assert refused.headers["Retry-After"] == "1"
    assert len(redis.Redis.from_url(valkey).keys(f"{prefix}:job:*")) == jobs_before
    # Alice can still read without waiting, and Bob can still wait.
    assert httpx.get(url, headers=auth(ALICE), timeout=5).status_code == 200
    start = time.monotonic()
    bob = httpx.get(f"{base}/v1/jobs/{bobs}", headers=auth(BOB, 1), timeout=5)
    assert bob.status_code == 200 and bob.headers["Preference-Applied"] == "wait=1"
    assert 0.9 <= time.monotonic() - start < 3
    for t in threads:
        t.join(10)
    assert [r.status_code for r in parked] == [200] * 4
    # Her places are back once they answered.
    again = httpx.get(url, headers=auth(ALICE, 0.2), timeout=5)
    assert again.status_code == 200 and again.headers["Preference-Applied"] == "wait=0.2"


def open_waiting(base: str, method: str, path: str, key: str, wait: float) -> socket.socket:
    """A request with ``Prefer: wait`` sent on a raw connection, left unanswered (close it to go)."""
    url = urlsplit(base)
    body = json.dumps(JOB).encode() if method == "POST" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Prefer: wait={wait:g}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn = socket.create_connection((url.hostname, url.port), timeout=5)
    conn.sendall(head.encode() + body)
    return conn


def test_a_client_that_goes_away_gives_its_waiting_place_back_at_once(gateway: Callable[..., Stack]) -> None:
    stack = gateway(DIFFQ_MAX_WAITERS_PER_KEY="3", DIFFQ_MAX_WAIT_SECONDS="60")
    base = stack.base_url
    job_id = submit(base, ALICE)
    # Alice's three places: two reads of her queued job and a submission, each to wait 60 s.
    conns = [open_waiting(base, "GET", f"/v1/jobs/{job_id}", ALICE, 60) for _ in range(2)]
    conns.append(open_waiting(base, "POST", "/v1/jobs", ALICE, 60))
    deadline = time.monotonic() + 5
    while True:  # until her bound is full: a read is then answered at once, not waiting
        probe = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE, 0.1), timeout=5)
        if "Preference-Applied" not in probe.headers or time.monotonic() > deadline:
            break
    refused = httpx.post(f"{base}/v1/jobs", json=JOB, headers=auth(ALICE, 1), timeout=5)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "too_many_waiters"
    for conn in conns:  # the clients go away, 60 s before their waits would end
        conn.close()
    time.sleep(0.5)
    start = time.monotonic()
    again = httpx.post(f"{base}/v1/jobs", json=JOB, headers=auth(ALICE, 1), timeout=5)
    assert again.status_code == 202, again.text
    assert again.headers["Preference-Applied"] == "wait=1" and time.monotonic() - start < 3

    # All three places are back: three waiting reads at once are all applied.
    async def three() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            reads = [client.get(f"/v1/jobs/{job_id}", headers=auth(ALICE, 0.5)) for _ in range(3)]
            return list(await asyncio.gather(*reads))

    assert [r.headers.get("Preference-Applied") for r in asyncio.run(three())] == ["wait=0.5"] * 3
    assert "Traceback" not in stack.read_log("gateway")


def test_a_waiting_request_is_woken_when_its_job_is_cancelled(gateway: Callable[..., Stack]) -> None:
    base = gateway().base_url
    job_id = submit(base, ALICE)
    out: list[tuple[httpx.Response, float]] = []

    def wait() -> None:
        r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE, 20), timeout=30)
        out.append((r, time.monotonic()))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    cancelled = httpx.delete(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE), timeout=5)
    assert cancelled.status_code == 200, cancelled.text
    at = time.monotonic()
    waiter.join(10)
    r, woken = out[0]
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert woken - at < 1.0, woken - at


def test_waiting_survives_a_valkey_restart(prefix: str, tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "valkey"
    proc = start_valkey(data, port)
    url = f"redis://127.0.0.1:{port}/0"
    stack = Stack(env=stack_env(url, prefix, DIFFQ_AUTH="required", DIFFQ_API_KEYS=KEYS), logs=tmp_path)
    try:
        stack.start_gateway()
        base = stack.base_url
        across_id, after_id = submit(base, ALICE), submit(base, ALICE)
        out: dict[str, tuple[httpx.Response, float]] = {}

        def wait(job_id: str) -> None:
            r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE, 8), timeout=20)
            out[job_id] = (r, time.monotonic())

        across = threading.Thread(target=wait, args=(across_id,))
        across.start()
        time.sleep(0.5)
        proc = _restart(proc, data, port)
        assert wait_for_http(f"{base}/readyz", timeout=20)
        after = threading.Thread(target=wait, args=(after_id,))  # a wait begun after the restart
        after.start()
        time.sleep(1.5)  # the subscription is made again (back-off from 0.1 s) by now
        cancels = [
            httpx.delete(f"{base}/v1/jobs/{j}", headers=auth(ALICE), timeout=5) for j in (across_id, after_id)
        ]
        at = time.monotonic()
        assert [c.status_code for c in cancels] == [200, 200], [c.text for c in cancels]
        across.join(15)
        after.join(15)
        for job_id in (across_id, after_id):
            r, woken = out[job_id]
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
            assert woken - at < 1.5, (job_id == across_id, woken - at)  # woken, not timed out at 8 s
        assert "Traceback" not in stack.read_log("gateway")
    finally:
        stack.stop_all()
        proc.kill()
        proc.wait(10)


def _restart(proc: subprocess.Popen[bytes], data: Path, port: int) -> subprocess.Popen[bytes]:
    """SIGKILL, then the same port and data (the AOF brings the jobs back)."""
    proc.kill()
    proc.wait(10)
    return start_valkey(data, port)


@pytest.fixture
def store(valkey: str, prefix: str) -> Iterator[RedisStore]:
    s = RedisStore(valkey, prefix=prefix, ttl_seconds=60)
    yield s
    s.close()


def test_a_job_already_terminal_when_the_wait_begins_is_not_waited_on(store: RedisStore) -> None:
    """The announcement came before the subscription: the read after it tells."""
    job_id = "a" * 32

    async def run() -> tuple[float, float]:
        waiters = Waiters(store, max_per_key=1, max_total=10)
        try:
            start = time.monotonic()
            await waiters.wait(job_id, 5, lambda: _true())
            quick = time.monotonic() - start
            with waiters.slot("k"), pytest.raises(TooManyWaiters), waiters.slot("k"):
                pass
            start = time.monotonic()
            await waiters.wait(job_id, 0.3, lambda: _false())
            return quick, time.monotonic() - start
        finally:
            await waiters.close()

    quick, timed_out = asyncio.run(run())
    assert quick < 1.0
    assert 0.3 <= timed_out < 1.0


async def _true() -> bool:
    return True


async def _false() -> bool:
    return False


def test_the_waiters_gauge_follows_places_taken_and_given_back(store: RedisStore) -> None:
    metrics = GatewayMetrics()
    waiters = Waiters(
        store, max_per_key=2, max_total=3, on_count=lambda kind, n: metrics.waiters.labels(kind).set(n)
    )

    def gauge(kind: str = "wait") -> float | None:
        return metrics.own.get_sample_value("diffq_waiters", {"kind": kind})

    assert gauge() == 0
    with waiters.slot("alice"):
        assert gauge() == 1
        with waiters.slot("alice"):
            assert gauge() == 2
            with pytest.raises(TooManyWaiters), waiters.slot("alice"):  # refused: not counted
                pass
            assert gauge() == 2
            with waiters.slot("bob", kind="stream"):
                assert gauge() == 2 and gauge("stream") == 1  # the same bounds, counted apart
                with pytest.raises(TooManyWaiters), waiters.slot("carol"):  # the process's bound
                    pass
                assert gauge() == 2 and gauge("stream") == 1
        assert gauge() == 1 and gauge("stream") == 0
    with pytest.raises(RuntimeError), waiters.slot("bob"):  # a request that fails gives its place back
        assert gauge() == 1
        raise RuntimeError("the request failed while waiting")
    assert gauge() == 0 and waiters.waiting == 0


def waiting_gauge(base: str) -> list[float]:
    """The ``diffq_waiters{kind="wait"}`` samples of a scrape (one, when summed over processes)."""
    text = httpx.get(f"{base}/metrics", headers=auth(ALICE), timeout=5).text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "diffq_waiters" and sample.labels == {"kind": "wait"}
    ]


def test_the_gateway_reports_its_waiting_requests_summed_over_its_processes(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway(DIFFQ_GATEWAY_PROCESSES="2")
    base = stack.base_url
    assert waiting_gauge(base) == [0]
    job_id = submit(base, ALICE)
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE, 20), timeout=30)
            )
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    try:
        # Six wait, whichever of the two processes took each; the scrape, answered by either, adds them.
        seen: list[list[float]] = []

        def six() -> bool:
            seen.append(waiting_gauge(base))
            return seen[-1] == [6]

        wait_until_true(six, 5)
        assert seen[-1] == [6], seen[-5:]
    finally:
        cancelled = httpx.delete(f"{base}/v1/jobs/{job_id}", headers=auth(ALICE), timeout=5)
        for t in threads:
            t.join(10)
    assert cancelled.status_code == 200 and [r.status_code for r in answers] == [200] * 6
    assert all(r.json()["status"] == "cancelled" for r in answers)
    assert waiting_gauge(base) == [0]  # every place given back once they answered


def wait_until_true(check: Callable[[], bool], timeout: float) -> None:
    """Call ``check`` until it is true or ``timeout`` seconds pass (the caller asserts after)."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
