"""``Prefer: wait`` and event streams: requests held open on a job, at no cost to anyone else.

One pub/sub connection per gateway process (``RedisStore.job_feed``, pattern subscriptions to
every job's terminal announcement and to watched jobs' steps, not a connection of the store's
pool) wakes the waiting requests of the announced job, each an ``asyncio.Event`` on the event
loop, and hands each event stream (``listen``) its job's announcements. A waiting request or a
stream holds no Redis connection and no thread: only its HTTP connection.

Waiting requests and event streams share one bound per API key (``DIFFQ_MAX_WAITERS_PER_KEY``)
and one per process (``DIFFQ_MAX_WAITERS``); past either a request is refused with 429
``too_many_waiters`` before anything is done (a submission is not queued), so one key's
waiters cannot take the others'.

An announcement can be missed only while the subscription is down: after it is made again
(the feed reconnects by itself, with back-off, after a store restart) every waiter reads its
job again, and so does each new waiter once the subscription is confirmed.

``on_count`` (the ``diffq_waiters`` gauge) hears the process's number of places held of a
kind (``wait``: ``Prefer: wait`` requests; ``stream``: event streams) each time one of that
kind is taken or given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from diffq.errors import ServiceError
from diffq.store import Announcement, JobFeed, RedisStore

log = logging.getLogger("diffq.gateway")

# After a failed read of a job's record (the store away or busy) a waiter reads it again this soon.
_RECHECK_SECONDS = 0.1
# The feed's reconnect back-off while the store is away: from the first to the last, doubling.
_BACKOFF_SECONDS = (0.1, 2.0)
# Waiters' own reads of their records, at once: a reconnect wakes every waiter, and they must not
# take the store pool's connections from other requests.
_CONCURRENT_READS = 8


class TooManyWaiters(ServiceError):
    """This key (or this gateway process) holds its bound of waiting requests."""

    type = "too_many_waiters"
    status = 429
    retryable = True


class _Waiter:
    __slots__ = ("announced", "event")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.announced = False


# Announcements an event stream has not taken yet, at most (a job's steps, then its end); past
# it the oldest go and the stream reads the record again instead.
_LISTENER_BACKLOG = 4096


KINDS = ("wait", "stream")  # what holds a waiting place: a Prefer: wait request, an event stream


class Listener:
    """One event stream's inbox: its job's announcements, in order, and whether it must read
    the record again (announcements may have been missed: the feed was made again, or the
    inbox overflowed)."""

    __slots__ = ("_event", "_items", "closed", "resync")

    def __init__(self) -> None:
        self._items: deque[Announcement] = deque()
        self._event = asyncio.Event()
        self.resync = False
        self.closed = False  # the gateway is stopping: the stream ends, its client resumes elsewhere

    def put(self, announcement: Announcement) -> None:
        if len(self._items) >= _LISTENER_BACKLOG:
            self._items.popleft()
            self.resync = True
        self._items.append(announcement)
        self._event.set()

    def wake(self) -> None:
        self.resync = True
        self._event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def next(self, timeout: float) -> list[Announcement]:
        """What was announced since the last call (waiting up to ``timeout`` seconds for
        something, or for a ``wake``); empty when nothing was, at once once closed."""
        if not self._items and not self.resync and not self.closed:
            self._event.clear()
            await _wait_for(self._event, timeout)
        items = list(self._items)
        self._items.clear()
        return items


class Waiters:
    """The waiting requests of one gateway process and the subscription that wakes them."""

    def __init__(
        self,
        store: RedisStore,
        max_per_key: int,
        max_total: int,
        on_count: Callable[[str, int], object] | None = None,
    ) -> None:
        self._store = store
        self._on_count = on_count
        self.max_per_key, self.max_total = max_per_key, max_total
        self._per_key: dict[str, int] = {}
        self._total = 0
        self._by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.draining = False  # the process is stopping: waits answer at once, streams end
        self._fresh()

    def _fresh(self) -> None:
        """The loop-bound state (events belong to the loop that first waits on them)."""
        self._live = asyncio.Event()  # set while the subscription is confirmed and read
        self._reads = asyncio.Semaphore(_CONCURRENT_READS)
        self._by_job: dict[str, set[_Waiter]] = {}
        self._listeners: dict[str, set[Listener]] = {}

    # bounds -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(
        self, owner: str, instead: str = "poll without Prefer: wait", kind: str = "wait"
    ) -> Iterator[None]:
        """Hold one of ``owner``'s waiting places while inside; ``TooManyWaiters`` (429) when
        the key, or the process, holds its bound. ``instead`` tells the caller what else to do
        (the route's own words); ``kind`` (one of ``KINDS``) is what the gauge counts it as."""
        held = self._per_key.get(owner, 0)
        if held >= self.max_per_key:
            raise TooManyWaiters(
                f"this key already holds {held} waiting requests (DIFFQ_MAX_WAITERS_PER_KEY); "
                f"{instead}, or retry once one has answered",
                retry_after=1,
            )
        if self._total >= self.max_total:
            raise TooManyWaiters(
                f"this gateway holds {self._total} waiting requests (DIFFQ_MAX_WAITERS); "
                f"{instead}, or retry shortly",
                retry_after=1,
            )
        self._per_key[owner] = held + 1
        self._total += 1
        self._counted(kind, +1)
        try:
            yield
        finally:
            self._total -= 1
            left = self._per_key[owner] - 1
            if left:
                self._per_key[owner] = left
            else:
                del self._per_key[owner]
            self._counted(kind, -1)

    def _counted(self, kind: str, change: int) -> None:
        self._by_kind[kind] += change
        if self._on_count is not None:
            self._on_count(kind, self._by_kind[kind])

    @property
    def waiting(self) -> int:
        """Requests holding a waiting place now."""
        return self._total

    # waiting ----------------------------------------------------------------------------
    async def wait(self, job_id: str, timeout: float, finished: Callable[[], Awaitable[bool | None]]) -> None:
        """Return once job ``job_id`` is announced terminal, ``finished()`` says it is, or
        ``timeout`` seconds pass. ``finished`` reads the record: True (terminal or gone), False,
        or None (it could not tell: the store is away). Never raises for the store: the
        caller's read afterwards answers 503 if it is still away."""
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiter = _Waiter()
        # Registered before the record is read: an announcement from now on wakes it.
        self._by_job.setdefault(job_id, set()).add(waiter)
        try:
            while (left := deadline - loop.time()) > 0 and not waiter.announced and not self.draining:
                waiter.event.clear()  # before reading: a reconnect from now on wakes it again
                if not self._live.is_set():  # announcements would be missed: wait for the feed
                    await _wait_for(self._live, left)
                    continue
                async with self._reads:
                    done = await finished()
                if done or waiter.announced:
                    return
                # The subscription is live: nothing to do but wait for the announcement, or for
                # the feed to be made again (then read again); a failed read is tried again soon.
                pause = deadline - loop.time() if done is False else _RECHECK_SECONDS
                await _wait_for(waiter.event, pause)
        finally:
            waiters = self._by_job.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_job[job_id]

    @contextlib.contextmanager
    def listen(self, job_id: str) -> Iterator[Listener]:
        """An inbox for job ``job_id``'s announcements while inside (an event stream's): its
        terminal status and, while the job is watched, its steps. Registered on entry, so
        whatever is announced from then on reaches it. ``resync`` starts set if the
        subscription is down, and is set again when it is made again: announcements may have
        been missed meanwhile."""
        self.start()
        listener = Listener()
        listener.resync = not self._live.is_set()
        listener.closed = self.draining
        self._listeners.setdefault(job_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[job_id]

    def _announce(self, announcement: Announcement) -> None:
        job_id = announcement.job_id
        if announcement.status is not None:
            for waiter in self._by_job.get(job_id, ()):
                waiter.announced = True
                waiter.event.set()
        for listener in self._listeners.get(job_id, ()):
            listener.put(announcement)

    def _wake_all(self) -> None:
        for waiters in self._by_job.values():
            for waiter in waiters:
                waiter.event.set()
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.wake()

    def drain(self) -> None:
        """The process is stopping (uvicorn's shutdown has begun; ``service.limits`` calls
        this): waiting requests answer with the job as it is now, and event streams end after
        their last event, so their clients resume on another gateway (``Last-Event-ID``) well
        before the server's graceful timeout would cut them. Idempotent."""
        if self.draining:
            return
        self.draining = True
        for waiters in self._by_job.values():
            for waiter in waiters:
                waiter.event.set()
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.close()

    # the subscription -------------------------------------------------------------------
    def start(self) -> None:
        """Run the subscription on this event loop (once; again if the loop changed, as with
        a test client that runs each request on a loop of its own)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not loop:  # events and tasks belong to their loop: start afresh
            self._loop = loop
            self._fresh()
        self._task = loop.create_task(self._run(), name="diffq-job-waits")

    async def close(self) -> None:
        """Stop the subscription (at shutdown); waiters still waiting answer at their timeout."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff, down_since_logged = _BACKOFF_SECONDS[0], False
        while True:
            try:
                feed = await self._store.job_feed()
            except Exception as e:  # the store away (any error): try again, with back-off
                if not down_since_logged:
                    log.warning("job waits cannot subscribe; retrying", extra={"error": type(e).__name__})
                    down_since_logged = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_SECONDS[1])
                continue
            if down_since_logged:
                log.info("job waits subscribed again")
            backoff, down_since_logged = _BACKOFF_SECONDS[0], False
            self._live.set()
            self._wake_all()  # what they wait on may have been announced while the feed was down
            try:
                await self._read(feed)
            except Exception as e:  # lost (a restart, a silent server): make it again
                log.warning("job waits lost their subscription", extra={"error": type(e).__name__})
                down_since_logged = True
            finally:
                self._live.clear()
                await feed.aclose()

    async def _read(self, feed: JobFeed) -> None:
        while True:
            announcement = await feed.next(timeout=1.0)
            if announcement is not None:
                self._announce(announcement)


async def _wait_for(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, timeout))
