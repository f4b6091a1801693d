"""Pub/sub: the announcements of new work to busy workers, and of terminal jobs and watched
jobs' steps to the gateway's waiting requests and event streams."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any

import redis

from diffq.store.codec import text

# A quiet terminal-announcement subscription is pinged after this long; no answer within the
# Redis timeout after that and it counts as lost (a paused server sends no FIN).
_FEED_PING_SECONDS = 5.0


class NewWork:
    """Announcements of new submissions for one model, read without a round trip.

    A busy worker looks for newcomers between steps; asking the queue every step costs a
    round trip per step, which on fast hardware is a large part of a step. The submit script
    publishes a new entry on the model's channel when the model's queue was empty (only a
    worker whose claim found it empty waits for news; one that found jobs left claims again
    at its next free row), and ``arrived`` only reads what this connection already received.
    Announcements are a hint, never the queue itself: one missed (a reconnect, a
    subscription not yet active) only delays a claim until the worker's periodic look at the
    queue.
    """

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    def arrived(self) -> bool:
        """Whether anything was announced since the last call; never blocks. True when the
        connection failed, so the caller asks the queue itself (and meets the outage there)."""
        got = False
        try:
            for _ in range(10_000):  # drain what is buffered, not what keeps coming
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
                got = True
        except (redis.RedisError, OSError):
            return True
        return got

    def wait(self, seconds: float) -> bool:
        """Whether anything is announced within ``seconds`` (an idle worker's wait for work;
        True at once if something already was). Drains what arrived."""
        try:
            if self._pubsub.get_message(timeout=seconds) is None:
                return False
        except (redis.RedisError, OSError):
            time.sleep(seconds)  # the outage surfaces at the caller's next claim
            return True
        self.arrived()
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()


@dataclass(frozen=True)
class Announcement:
    """One message of a ``JobFeed``: a job turned terminal (``status``), or a watched job's
    worker wrote its ``step``."""

    job_id: str
    status: str | None = None
    step: int | None = None


class JobFeed:
    """Every job's terminal announcements and watched jobs' steps, from one connection's two
    pattern subscriptions (``RedisStore.job_feed``).

    One message per terminal transition of any job of this prefix reaches every gateway
    process: a few bytes each, against a pub/sub connection per waiting request otherwise.
    Steps are announced only for jobs an event stream watches (``RedisStore.watch_async``).
    A silent server (paused, a network partition) would look like a quiet one, so a quiet
    connection is pinged and one that does not answer raises ``ConnectionError``.
    """

    def __init__(self, client: Any, pubsub: Any, done_prefix: str, step_prefix: str, timeout: float) -> None:
        self._client, self._pubsub = client, pubsub
        self._done_prefix, self._step_prefix = done_prefix, step_prefix
        self.patterns = (_literally(done_prefix) + "*", _literally(step_prefix) + "*")
        self._timeout = timeout
        self._last_heard = time.monotonic()
        self._pinged = False

    async def confirmed(self) -> None:
        """Until the server confirmed both pattern subscriptions (or ``timeout`` passes)."""
        deadline = time.monotonic() + self._timeout
        confirmed = 0
        while (left := deadline - time.monotonic()) > 0:
            message = await self._pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "psubscribe":
                confirmed += 1
                if confirmed == len(self.patterns):
                    self._last_heard = time.monotonic()
                    return
        raise redis.TimeoutError("the job store did not confirm the subscription")

    async def next(self, timeout: float) -> Announcement | None:
        """The next announcement, or None when none came within ``timeout``. Raises redis-py's
        errors when the connection is lost or the server stops answering."""
        message = await self._pubsub.get_message(timeout=timeout)
        now = time.monotonic()
        if message is not None:
            self._last_heard, self._pinged = now, False
            if message["type"] != "pmessage":
                return None
            channel = text(message.get("channel") or b"")
            data = text(message.get("data") or b"")
            if channel.startswith(self._done_prefix):
                return Announcement(channel[len(self._done_prefix) :], status=data)
            if channel.startswith(self._step_prefix) and data.isdigit():
                return Announcement(channel[len(self._step_prefix) :], step=int(data))
            return None
        quiet = now - self._last_heard
        if self._pinged and quiet > _FEED_PING_SECONDS + self._timeout:
            raise redis.ConnectionError("the job store stopped answering on the subscription")
        if not self._pinged and quiet > _FEED_PING_SECONDS:
            await self._pubsub.ping()  # its pong is a message: heard again
            self._pinged = True
        return None

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _literally(prefix: str) -> str:
    """``prefix`` as a glob pattern that matches it literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
