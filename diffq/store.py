"""Redis persistence: job records, the per-model stream queue, results and worker heartbeats.

The only module that talks to Redis. Layout (``<p>`` is the key prefix):

- ``<p>:job:<id>``         hash: the job record (request JSON, status, times, progress, ...)
- ``<p>:job:<id>:images``  hash: image index -> PNG bytes
- ``<p>:queue:<model>``    stream of job ids, one consumer group ``workers`` per model
- ``<p>:workers:<model>``  sorted set: worker id -> last heartbeat (unix seconds)
- ``<p>:dead:<model>``     stream of jobs given up after too many deliveries (dead letters)
- ``<p>:work:<model>``     counter: denoiser evaluations of the model's queued jobs (admission)
- ``<p>:inflight:<owner>`` sorted set: the owner's unfinished job ids, scored by submit time
- ``<p>:idem:<owner>:<h>`` the job id (and request fingerprint) an Idempotency-Key created
- ``<p>:rate:<owner>``     hash: the owner's submission token bucket

Pub/sub channels: ``<p>:done:<id>`` announces a job's terminal status (``Prefer: wait``: one
pattern subscription per gateway process, ``DoneFeed``);
``<p>:new:<model>`` announces each submission to busy workers (``NewWork``).

Status changes are compare-and-set on the status the caller read, so a worker finishing a job
and a client cancelling it cannot both win. A record lives as long as its job is queued or
running, however long that takes; it (and its images) expire ``ttl`` seconds after the job
turns terminal.

Every Redis error is translated here, in one place (``fault``): the gateway's calls raise
``Unavailable`` (503 with Retry-After, never a 500), and ``RedisStore.UNREACHABLE`` is what
workers back off on, whatever Redis said (out of reach, loading, out of memory, read-only...).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
from redis.exceptions import ResponseError

from diffq.errors import Overloaded, RateLimited, TooManyJobs, Unavailable
from diffq.jobs import ANONYMOUS, PRIORITIES, Job, JobError, JobRequest, Priority, Status

try:  # redis-py 7.1 and later
    from redis.maint_notifications import MaintNotificationsConfig

    # On RESP3, redis-py 8 turns maintenance notifications on ("auto"), and with them on its
    # pools skip the check that a connection taken from the pool is still open: after a
    # Valkey restart the first command on every pooled connection failed (503s for nothing).
    # One Valkey sends no such notifications: off, the pool reconnects a closed connection.
    _CLIENT_OPTIONS: dict[str, Any] = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
except ImportError:  # older redis-py: no notifications, the pool checks connections itself
    _CLIENT_OPTIONS = {}

log = logging.getLogger("diffq.store")

GROUP = "workers"
# A quiet terminal-announcement subscription is pinged after this long; no answer within the
# Redis timeout after that and it counts as lost (a paused server sends no FIN).
_FEED_PING_SECONDS = 5.0
# Connections of the event loop's client (submissions and reads of async routes; waiting takes none).
_ASYNC_POOL_SIZE = 100

# A Lua helper the stream scripts share: a consumer group's XINFO GROUPS fields, or nil.
_GROUP_FIELDS = """
local function group_fields(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then return f end
  end
  return nil
end
"""

# Admit and create a job in one atomic step (one round trip): replay an earlier submission
# with the same idempotency key; take a token from the owner's bucket; refuse when the owner
# holds its limit of unfinished jobs or the model's queued work would pass its bound; else
# write the record, enqueue it, count its work and its owner's in-flight job, remember the
# idempotency key, and answer with the new entry's queue position: the entries waiting in
# its stream (the group's lag, which counts the new one) and in the streams of higher
# priority. The bucket uses the server's clock, so gateways agree.
# KEYS: job, stream, owner's in-flight set, model's work counter, idempotency key, owner's
#       rate bucket, then the model's streams of higher priority.
# ARGV: job id, ttl, work, now, max in flight, max work, use idempotency ('1'/''),
#       fingerprint, tokens per second (0: no limit), burst, group, the model's new-work
#       channel (announced to busy workers, see ``NewWork``), then the record's field/value
#       pairs.
#
# The shebang makes Valkey refuse the whole script with OOM while the store is past
# ``maxmemory``: without one, a script is refused only if its first write may grow memory, and
# ZREMRANGEBYSCORE (a write that never does) would let a submission through a full store.
_SUBMIT = (
    "#!lua\n"
    + _GROUP_FIELDS
    + """
if ARGV[7] == '1' then
  local seen = redis.call('GET', KEYS[5])
  if seen then return {'replay', seen} end
end
local rate, burst = tonumber(ARGV[9]), tonumber(ARGV[10])
if rate > 0 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local b = redis.call('HMGET', KEYS[6], 'tokens', 'ts')
  local tokens = math.min(burst, (tonumber(b[1]) or burst) + (clock - (tonumber(b[2]) or clock)) * rate)
  local wait = nil
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
  redis.call('HSET', KEYS[6], 'tokens', tostring(tokens), 'ts', tostring(clock))
  redis.call('EXPIRE', KEYS[6], math.ceil(burst / rate) + 1)
  -- as a string: Lua numbers would be truncated to integers in the reply
  if wait then return {'rate_limited', tostring(wait)} end
end
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
local held = redis.call('ZCARD', KEYS[3])
if tonumber(ARGV[5]) > 0 and held >= tonumber(ARGV[5]) then return {'too_many_jobs', tostring(held)} end
local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
if tonumber(ARGV[6]) > 0 and queued + tonumber(ARGV[3]) > tonumber(ARGV[6]) then
  return {'overloaded', tostring(queued)}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 13))
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'work', ARGV[3])
redis.call('PUBLISH', ARGV[12], entry)
redis.call('HSET', KEYS[1], 'entry', entry)
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('INCRBY', KEYS[4], ARGV[3])
if ARGV[7] == '1' then redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[8], 'EX', ttl) end
local function waiting(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local g = group_fields(stream, ARGV[11])
  if not g then return redis.call('XLEN', stream) end
  if g['lag'] then return g['lag'] end
  return #redis.call('XRANGE', stream, '(' .. g['last-delivered-id'], '+', 'COUNT', 10000)
end
local position = waiting(KEYS[2])
for i = 7, #KEYS do position = position + waiting(KEYS[i]) end
return {'ok', entry, tostring(position)}
"""
)

# Compare-and-set the status; extra ARGV pairs are fields to set, '' values are deleted.
# Also keeps the books: a job leaving "queued" takes its work off the model's counter (one
# going back to "queued" puts it back), and a terminal job leaves its owner's in-flight set
# and is announced on its channel (for clients waiting on it).
# KEYS: job, images, owner's in-flight set, model's work counter, the job's channel.
# ARGV (from offset o): expected status, new status, ttl, job id, work delta, release
# ('1'/''), then pairs.
_TRANSITION_FN = """
local function transition(o)
  local cur = redis.call('HGET', KEYS[1], 'status')
  if not cur then return false end
  if cur ~= ARGV[o + 1] then return cur end
  redis.call('HSET', KEYS[1], 'status', ARGV[o + 2])
  for i = o + 7, #ARGV, 2 do
    if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
    else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  end
  -- A live job's record never expires; a terminal one's (and its images) after the TTL.
  if ARGV[o + 6] == '1' then
    redis.call('EXPIRE', KEYS[1], ARGV[o + 3])
    if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[o + 3]) end
  else
    redis.call('PERSIST', KEYS[1])
  end
  if ARGV[o + 6] == '1' then
    redis.call('ZREM', KEYS[3], ARGV[o + 4])
    redis.call('PUBLISH', KEYS[5], ARGV[o + 2])
  end
  if tonumber(ARGV[o + 5]) ~= 0 then
    if redis.call('INCRBY', KEYS[4], ARGV[o + 5]) < 0 then redis.call('SET', KEYS[4], 0) end
  end
  return 'OK'
end
"""
_TRANSITION = _TRANSITION_FN + "return transition(0)"

# A job's images and its status change in one step: ARGV[1] = n, ARGV[2..n+1] the PNGs in
# order, then the transition's arguments. The images are written only if the status is still
# the expected one (running): once a job has succeeded (whichever worker won), a late worker
# that ran it too changes nothing.
_STORE_RESULT = (
    _TRANSITION_FN
    + """
local n = tonumber(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= ARGV[n + 2] then return cur end
redis.call('DEL', KEYS[2])
for i = 1, n do redis.call('HSET', KEYS[2], tostring(i - 1), ARGV[i + 1]) end
return transition(n + 1)
"""
)

# Claim up to ARGV[3] new entries for consumer ARGV[2] of group ARGV[1] from the model's
# priority streams (KEYS, high first): the higher streams' entries first, then the next
# stream's while fewer than ARGV[3] were found; as {priority, id, fields} triples. Never blocks
# (the caller blocks across all streams).
_CLAIM_NEXT = """
local out = {}
local want = tonumber(ARGV[3])
for _, stream in ipairs(KEYS) do
  if #out >= want then break end
  local res = redis.call(
    'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want - #out, 'STREAMS', stream, '>')
  if res and res[1] then
    local priority = string.match(stream, ':([^:]+)$')
    for _, e in ipairs(res[1][2]) do table.insert(out, {priority, e[1], e[2]}) end
  end
end
return out
"""

# Renew a lease: reset the idle time of the entries (ARGV[3..]) that consumer ARGV[2] still
# holds in KEYS[1]; return those it does not (taken over by another worker, or acked).
# XCLAIM alone would take them from whoever holds them now.
_RENEW = """
local held = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])) do
  held[p[1]] = true
end
local mine, gone = {}, {}
for i = 3, #ARGV do
  if held[ARGV[i]] then table.insert(mine, ARGV[i]) else table.insert(gone, ARGV[i]) end
end
if #mine > 0 then
  -- JUSTID: a renewal resets the idle time without counting as another delivery
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do table.insert(args, id) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return gone
"""

# An entry's 1-based position among the entries of KEYS[1] not yet delivered to group
# ARGV[1], counted in the server (nothing but the number crosses the network); 0 once
# delivered. Counts at most ARGV[3] entries.
_POSITION = (
    _GROUP_FIELDS
    + """
local g = group_fields(KEYS[1], ARGV[1])
local last = g and g['last-delivered-id'] or '0-0'
local function key(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local ems, eseq = key(ARGV[2])
local lms, lseq = key(last)
if ems < lms or (ems == lms and eseq <= lseq) then return 0 end
return #redis.call('XRANGE', KEYS[1], '(' .. last, ARGV[2], 'COUNT', ARGV[3])
"""
)

# What waits in a model's stream for a worker: entries after the group's last delivered id
# whose job is still queued (a cancelled or expired job's entry stays until a worker skips
# it), their denoiser work and the age of the oldest, by the server's clock. Summed here, so
# a scrape moves three numbers, not the backlog. Scans at most ARGV[2] entries. The job keys
# are built from ARGV[3] (the prefix): fine on a single server, not on Redis Cluster.
_QUEUE_STATS = (
    _GROUP_FIELDS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, -1} end
local g = group_fields(KEYS[1], ARGV[1])
local last = g and g['last-delivered-id'] or '0-0'
local depth, work, oldest = 0, 0, nil
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[2])) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  if f['job'] and redis.call('HGET', ARGV[3] .. ':job:' .. f['job'], 'status') == 'queued' then
    depth = depth + 1
    work = work + (tonumber(f['work']) or 0)
    oldest = oldest or tonumber(string.match(e[1], '^(%d+)'))
  end
end
local age = -1
if oldest then
  local t = redis.call('TIME')
  age = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - oldest
end
return {depth, work, age}
"""
)

# Set one field on each existing record (KEYS[i] gets ARGV[i + 1]); never resurrect an
# expired record as a fragment without a request.
_SET_IF_EXISTS = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, ARGV[1], ARGV[i + 1]) end
end
return #KEYS
"""


# Each running job's step (KEYS[i] gets ARGV[i], on records that still exist), and the
# 1-based indices of those whose cancel was requested.
_SET_PROGRESS = """
local cancelled = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'step', ARGV[i])
    if redis.call('HGET', key, 'cancel') == '1' then table.insert(cancelled, i) end
  end
end
return cancelled
"""


@dataclass(frozen=True)
class QueueStats:
    """A model's backlog: jobs not yet handed to a worker and their denoiser work."""

    depth: int
    evaluations: int
    oldest_age_seconds: float | None  # None when nothing waits


@dataclass(frozen=True)
class Claimed:
    """A job handed to a worker by the stream, with the entry to ack when done."""

    entry_id: str
    job_id: str
    work: int = 0  # the job's denoiser evaluations, as enqueued
    priority: Priority = Priority.NORMAL  # which of the model's streams holds the entry


@dataclass(frozen=True)
class Limits:
    """Admission bounds checked atomically with the submission; 0 means unbounded."""

    max_in_flight_per_owner: int = 0
    max_queued_evaluations: int = 0
    rate_per_second: float = 0.0  # submissions per owner; 0: no limit
    burst: int = 1


@dataclass(frozen=True)
class Submitted:
    """A new job's stream entry, or the earlier job an idempotency key already created."""

    entry_id: str | None = None
    position: int | None = None  # the new entry's queue position
    replay_of: str | None = None
    same_request: bool = True  # for a replay: was the request the same as the first time?


class NewWork:
    """Announcements of new submissions for one model, read without a round trip.

    A busy worker looks for newcomers between steps; asking the queue every step costs a
    round trip per step, which on fast hardware is a large part of a step. The submit script
    publishes each new entry on the model's channel instead, and ``arrived`` only reads what
    this connection already received. Announcements are a hint, never the queue itself: one
    missed (a reconnect, a subscription not yet active) only delays a claim until the
    worker's periodic look at the queue.
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

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()


class DoneFeed:
    """Terminal announcements of every job, from one pattern subscription (``RedisStore.done_feed``).

    One message per terminal transition of any job of this prefix reaches every gateway
    process: a few bytes each, against a pub/sub connection per waiting request otherwise.
    A silent server (paused, a network partition) would look like a quiet one, so a quiet
    connection is pinged and one that does not answer raises ``ConnectionError``.
    """

    def __init__(self, client: Any, pubsub: Any, channel_prefix: str, timeout: float) -> None:
        self._client, self._pubsub = client, pubsub
        self._channel_prefix = channel_prefix
        self.pattern = re.sub(r"([*?\[\]\\])", r"\\\1", channel_prefix) + "*"  # the prefix literally
        self._timeout = timeout
        self._last_heard = time.monotonic()
        self._pinged = False

    async def confirmed(self) -> None:
        """Until the server confirmed the pattern subscription (or ``timeout`` passes)."""
        deadline = time.monotonic() + self._timeout
        while (left := deadline - time.monotonic()) > 0:
            message = await self._pubsub.get_message(timeout=left)
            if message is not None and message["type"] == "psubscribe":
                self._last_heard = time.monotonic()
                return
        raise redis.TimeoutError("the job store did not confirm the subscription")

    async def next(self, timeout: float) -> str | None:
        """The id of a job announced terminal, or None when none was within ``timeout``.
        Raises redis-py's errors when the connection is lost or the server stops answering."""
        message = await self._pubsub.get_message(timeout=timeout)
        now = time.monotonic()
        if message is not None:
            self._last_heard, self._pinged = now, False
            channel = _s(message.get("channel") or b"")
            if message["type"] == "pmessage" and channel.startswith(self._channel_prefix):
                return channel[len(self._channel_prefix) :]
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


class RedisStore:
    def __init__(
        self, url: str, prefix: str = "diffq", ttl_seconds: int = 3600, timeout: float = 2.0
    ) -> None:
        self.prefix = prefix
        self.ttl = int(ttl_seconds)
        # Typed as Any: redis-py's stubs type replies as unions of every RESP type.
        self._r: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
            **_CLIENT_OPTIONS,
        )
        # A blocking read must return before the socket times out, or an idle wait would look
        # like a dead server: cap blocks at half the timeout and let callers poll again.
        self._max_block_ms = max(1, int(timeout * 500))
        self._url, self._timeout = url, timeout
        self._aio: Any = None  # the asyncio client, made on first use in its event loop
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._submit = self._r.register_script(_SUBMIT)
        self._transition = self._r.register_script(_TRANSITION)
        self._store_result = self._r.register_script(_STORE_RESULT)
        self._set_if_exists = self._r.register_script(_SET_IF_EXISTS)
        self._set_progress = self._r.register_script(_SET_PROGRESS)
        self._queue_stats = self._r.register_script(_QUEUE_STATS)
        self._claim_next = self._r.register_script(_CLAIM_NEXT)
        self._renew = self._r.register_script(_RENEW)
        self._position = self._r.register_script(_POSITION)

    # keys -------------------------------------------------------------------------------
    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _images(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:images"

    def _queue(self, model: str, priority: Priority) -> str:
        return f"{self.prefix}:queue:{model}:{priority.value}"

    def _workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def _dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def _work(self, model: str) -> str:
        return f"{self.prefix}:work:{model}"

    def _inflight(self, owner: str) -> str:
        return f"{self.prefix}:inflight:{owner}"

    def _idem(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def _rate(self, owner: str) -> str:
        return f"{self.prefix}:rate:{owner}"

    def _new_work_channel(self, model: str) -> str:
        return f"{self.prefix}:new:{model}"

    def _done_channel(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    # health -----------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._r.close()

    # jobs -------------------------------------------------------------------------------
    def submit(
        self,
        job: Job,
        limits: Limits = Limits(),
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Submitted:
        """Admit, persist and enqueue a new queued job, all or nothing.

        Raises ``RateLimited``, ``TooManyJobs`` or ``Overloaded`` past ``limits``. With an idempotency key
        that this owner used before (within the TTL), nothing is written and the earlier job
        is returned instead; ``fingerprint`` tells whether the request was the same.
        """
        keys, args = self._submit_call(job, limits, idempotency_key, fingerprint)
        with _unavailable():
            reply = self._submit(keys=keys, args=args)
        return self._submitted(job, reply, fingerprint)

    async def submit_async(
        self,
        job: Job,
        limits: Limits = Limits(),
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Submitted:
        """``submit`` on an asyncio connection: an async route needs no thread for it."""
        keys, args = self._submit_call(job, limits, idempotency_key, fingerprint)
        script = self._async_submit()
        with _unavailable():
            reply = await script(keys=keys, args=args)
        return self._submitted(job, reply, fingerprint)

    def _async(self) -> Any:
        """This event loop's asyncio client (one per loop: an asyncio connection belongs to the
        loop that opened it), with the submit script registered on it."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio_loop is not loop:
            # A burst of requests past the pool's size waits (up to the Redis timeout) for a
            # connection to come back, rather than failing at once with "Too many connections"
            # as the default pool does: a burst is not an outage.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=_ASYNC_POOL_SIZE,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                **_CLIENT_OPTIONS,
            )
            self._aio = redis.asyncio.Redis(connection_pool=pool)
            self._aio_loop = loop
            self._aio_submit_script = self._aio.register_script(_SUBMIT)
        return self._aio

    def _async_submit(self) -> Any:
        self._async()
        return self._aio_submit_script

    async def get_async(self, job_id: str) -> Job | None:
        """``get`` on the asyncio connection."""
        with _unavailable():
            raw = await self._async().hgetall(self._job(job_id))
        return _decode(job_id, raw) if raw else None

    async def done_feed(self) -> DoneFeed:
        """A subscription to every job's terminal announcement (``<p>:done:*``) on a connection
        of its own, never one of the pool's: one per gateway process serves all its waiting
        requests (``service/waiters.py``). Returns once Valkey confirmed the subscription, so
        any job that turns terminal after this returns is announced on it. Redis errors are
        raised untranslated (the caller reconnects)."""
        client = redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            # No silent reconnect: a lost subscription must surface, so that the waiters
            # (whose announcements may have been missed meanwhile) read their jobs again.
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
            **_CLIENT_OPTIONS,
        )
        pubsub = client.pubsub()
        feed = DoneFeed(client, pubsub, f"{self.prefix}:done:", self._timeout)
        try:
            await pubsub.psubscribe(feed.pattern)
            await feed.confirmed()
        except BaseException:
            await feed.aclose()
            raise
        return feed

    def _submit_call(
        self, job: Job, limits: Limits, idempotency_key: str | None, fingerprint: str
    ) -> tuple[list[str], list[Any]]:
        keys = [
            self._job(job.id),
            self._queue(job.request.model, job.request.priority),
            self._inflight(job.owner),
            self._work(job.request.model),
            self._idem(job.owner, idempotency_key or ""),
            self._rate(job.owner),
            *(self._queue(job.request.model, p) for p in _higher(job.request.priority)),
        ]
        args: list[Any] = [
            job.id,
            self.ttl,
            job.request.evaluations,
            repr(job.created_at),
            limits.max_in_flight_per_owner,
            limits.max_queued_evaluations,
            "1" if idempotency_key is not None else "",
            fingerprint,
            limits.rate_per_second,
            limits.burst,
            GROUP,
            self._new_work_channel(job.request.model),
        ]
        for k, v in _encode(job).items():
            args += [k, v]
        return keys, args

    def _submitted(self, job: Job, reply: Any, fingerprint: str) -> Submitted:
        outcome, value, *rest = (_s(x) for x in reply)
        if outcome == "replay":
            job_id, _, first_fingerprint = value.partition(" ")
            return Submitted(replay_of=job_id, same_request=first_fingerprint == fingerprint)
        if outcome == "rate_limited":
            raise RateLimited("too many submissions from this key; slow down", retry_after=float(value))
        if outcome == "too_many_jobs":
            raise TooManyJobs(
                f"this key has {value} unfinished jobs, its limit; wait for some to finish",
                retry_after=5,
            )
        if outcome == "overloaded":
            raise Overloaded(
                f"the queue of {job.request.model} is full ({value} denoiser evaluations wait); retry later",
                retry_after=5,
            )
        return Submitted(entry_id=value, position=int(rest[0]))

    def queued_work(self, model: str) -> int:
        """The admission counter: denoiser evaluations of the model's queued jobs."""
        with _unavailable():
            return int(self._r.get(self._work(model)) or 0)

    def in_flight(self, owner: str) -> int:
        with _unavailable():
            return int(self._r.zcard(self._inflight(owner)))

    def forget_work(self, model: str, work: int) -> None:
        """Take a vanished job's work off the counter (its record expired while queued)."""
        if work and self._r.decrby(self._work(model), work) < 0:
            self._r.set(self._work(model), 0)

    def get(self, job_id: str) -> Job | None:
        with _unavailable():
            raw = self._r.hgetall(self._job(job_id))
        return _decode(job_id, raw) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        with _unavailable():
            pipe = self._r.pipeline(transaction=False)
            for j in job_ids:
                pipe.hgetall(self._job(j))
            raws = pipe.execute()
        return [_decode(j, raw) if raw else None for j, raw in zip(job_ids, raws, strict=True)]

    def save_transition(self, before: Job, after: Job) -> bool:
        """Write ``after`` if the stored status is still ``before.status``.

        False when the status moved on meanwhile (or the record expired): the caller lost the
        race and must re-read before deciding anything.
        """
        return self.save_transitions([(before, after)])[0]

    def save_transitions(self, changes: Sequence[tuple[Job, Job]]) -> list[bool]:
        """``save_transition`` for many jobs in one round trip; each is its own compare-and-set."""
        if not changes:
            return []
        calls = [self._transition_call(before, after) for before, after in changes]
        results = self._script_many(self._transition, calls)
        return [r is not None and _s(r) == "OK" for r in results]

    def store_results(self, results: Sequence[tuple[Job, Job, Sequence[bytes]]]) -> list[bool]:
        """For each (running record, succeeded record, PNGs): the images and the status change
        in one step, if the job is still running; all in one round trip. False, with nothing
        written, for a job that is terminal, back in the queue or gone."""
        if not results:
            return []
        calls = []
        for before, after, pngs in results:
            keys, args = self._transition_call(before, after)
            calls.append((keys, [len(pngs), *pngs, *args]))
        replies = self._script_many(self._store_result, calls)
        return [r is not None and _s(r) == "OK" for r in replies]

    def _script_many(self, script: Any, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """One script over many (keys, args) in one round trip.

        ``EVALSHA`` straight into the pipeline: redis-py's own script support would first ask
        ``SCRIPT EXISTS`` on every execute, a second round trip. A server that lost its script
        cache (a restart) answers NOSCRIPT to the first call and runs none of them: load it
        and send them again.
        """

        def send() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(pipe.execute())

        with _unavailable():
            try:
                return send()
            except redis.exceptions.NoScriptError:
                self._r.script_load(script.script)
                return send()

    def _transition_call(self, before: Job, after: Job) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the transition script for ``before`` -> ``after``."""
        changed = _encode(after)
        old = _encode(before)
        work = after.request.evaluations
        leaving_queue = before.status == Status.QUEUED and after.status != Status.QUEUED
        rejoining_queue = after.status == Status.QUEUED and before.status != Status.QUEUED
        delta = -work if leaving_queue else work if rejoining_queue else 0
        args: list[Any] = [
            before.status.value,
            after.status.value,
            self.ttl,
            after.id,
            delta,
            "1" if after.terminal else "",
        ]
        for k in _MUTABLE_FIELDS:
            # A record names the worker that made its last change even where the caller's copy
            # is older than the stored one (another worker took the job over meanwhile).
            if changed.get(k, "") != old.get(k, "") or (k == "worker" and changed.get(k)):
                args += [k, changed.get(k, "")]
        keys = [
            self._job(after.id),
            self._images(after.id),
            self._inflight(after.owner),
            self._work(after.request.model),
            self._done_channel(after.id),
        ]
        return keys, args

    def new_work(self, model: str) -> NewWork:
        """A subscription to the model's submissions (see ``NewWork``)."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        with _unavailable():
            pubsub.subscribe(self._new_work_channel(model))
        return NewWork(pubsub)

    def set_progress(self, steps: dict[str, int]) -> set[str]:
        """Record each running job's step, and return the jobs whose cancel was requested:
        the worker's one round trip per step for the whole batch."""
        if not steps:
            return set()
        ids = list(steps)
        flagged = self._set_progress(keys=[self._job(j) for j in ids], args=list(steps.values()))
        return {ids[int(i) - 1] for i in flagged}

    def request_cancel(self, job_id: str) -> None:
        with _unavailable():
            self._set_if_exists(keys=[self._job(job_id)], args=["cancel", "1"])

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        pipe = self._r.pipeline(transaction=False)
        for j in job_ids:
            pipe.hget(self._job(j), "cancel")
        return {j for j, flag in zip(job_ids, pipe.execute(), strict=True) if flag}

    # results ----------------------------------------------------------------------------
    def put_images(self, job_id: str, pngs: Sequence[bytes]) -> None:
        key = self._images(job_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping={str(i): png for i, png in enumerate(pngs)})
        pipe.expire(key, self.ttl)
        pipe.execute()

    def get_image(self, job_id: str, index: int) -> bytes | None:
        with _unavailable():
            data = self._r.hget(self._images(job_id), str(index))
        return bytes(data) if data is not None else None

    def delete_images(self, job_id: str) -> None:
        self._r.delete(self._images(job_id))

    # queue ------------------------------------------------------------------------------
    # One stream per model and priority; every worker of the model reads all three, high first.
    def ensure_group(self, model: str) -> None:
        for priority in PRIORITIES:
            try:
                self._r.xgroup_create(self._queue(model, priority), GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def claim(self, model: str, consumer: str, count: int, block_ms: int | None) -> list[Claimed]:
        """Up to ``count`` new entries for this consumer, higher priorities first: fewer than
        ``count`` means the streams had no more. With ``block_ms``, waits that long (at most
        half the socket timeout: an empty answer just means "poll again") when all are empty;
        what then arrives first is taken, at most ``count`` per priority."""
        if count <= 0:
            return []
        streams = [self._queue(model, p) for p in PRIORITIES]
        got = self._claim_next(keys=streams, args=[GROUP, consumer, count])
        if got:
            return [_claimed(_s(eid), _pairs(fields), Priority(_s(p))) for p, eid, fields in got]
        if block_ms is None:
            return []
        block = min(block_ms, self._max_block_ms)
        res = self._r.xreadgroup(GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block)
        by_stream = {_s(stream): entries for stream, entries in res or []}
        return [
            _claimed(eid, fields, p)
            for p, stream in zip(PRIORITIES, streams, strict=True)
            for eid, fields in by_stream.get(stream, [])
        ]

    def ack(self, model: str, entries: Sequence[Claimed]) -> None:
        """Done with these entries: acknowledged and deleted from their streams."""
        if not entries:
            return
        pipe = self._r.pipeline(transaction=True)
        for priority in PRIORITIES:
            ids = [c.entry_id for c in entries if c.priority == priority]
            if ids:
                pipe.xack(self._queue(model, priority), GROUP, *ids)
                pipe.xdel(self._queue(model, priority), *ids)
        pipe.execute()

    def renew(self, model: str, consumer: str, entries: Sequence[Claimed]) -> list[Claimed]:
        """Reset the idle time of the entries this consumer still holds: its lease on them.

        Returns the entries it no longer holds (another worker took them over after this one
        went quiet past its lease, or they were acked): the caller must let those go.
        """
        lost: list[Claimed] = []
        for priority in PRIORITIES:
            mine = [c for c in entries if c.priority == priority]
            if mine:
                gone = self._renew(
                    keys=[self._queue(model, priority)], args=[GROUP, consumer, *(c.entry_id for c in mine)]
                )
                gone_ids = {_s(g) for g in gone}
                lost += [c for c in mine if c.entry_id in gone_ids]
        return lost

    def reclaim(self, model: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Claimed]:
        """Take over entries idle for ``min_idle_ms`` (their worker died or hung), high first."""
        out: list[Claimed] = []
        for priority in PRIORITIES:
            if len(out) >= count:
                break
            res = self._r.xautoclaim(
                self._queue(model, priority), GROUP, consumer, min_idle_ms, "0-0", count=count - len(out)
            )
            entries = res[1] if len(res) > 1 else []
            out += [_claimed(eid, fields, priority) for eid, fields in entries if fields]
        return out

    def dead_letter(self, model: str, job_id: str, attempts: int, keep: int = 10_000) -> None:
        """Record a job given up on, for an operator to inspect (the newest ``keep`` are kept)."""
        fields = {"job": job_id, "attempts": attempts, "at": repr(time.time())}
        self._r.xadd(self._dead(model), fields, maxlen=keep, approximate=True)

    def dead_letters(self, model: str, count: int = 100) -> list[dict[str, str]]:
        with _unavailable():
            entries = self._r.xrevrange(self._dead(model), count=count)
        return [{_s(k): _s(v) for k, v in fields.items()} for _eid, fields in entries]

    def queue_position(
        self, model: str, entry_id: str, priority: Priority = Priority.NORMAL, limit: int = 10_000
    ) -> int | None:
        """1-based position among entries not yet handed to a worker, counting the waiting
        jobs of higher priorities first; None once handed out."""
        with _unavailable():
            own = int(self._position(keys=[self._queue(model, priority)], args=[GROUP, entry_id, limit]))
        if own == 0:
            return None
        ahead = sum(self._stream_stats(model, p, limit)[0] for p in _higher(priority))
        return own + ahead

    def queue_depth(self, model: str) -> int:
        """Jobs waiting for a worker (not yet delivered), all priorities."""
        return self.queue_stats(model).depth

    def queue_stats(self, model: str, limit: int = 100_000) -> QueueStats:
        """Jobs still queued and not yet delivered, all priorities: how many, their denoiser
        evaluations and the oldest one's age (entries scanned up to ``limit`` per priority;
        past that, lower bounds)."""
        per = [self._stream_stats(model, p, limit) for p in PRIORITIES]
        ages = [age for _, _, age in per if age >= 0]
        return QueueStats(
            sum(d for d, _, _ in per), sum(w for _, w, _ in per), max(ages) / 1000 if ages else None
        )

    def _stream_stats(self, model: str, priority: Priority, limit: int) -> tuple[int, int, int]:
        with _unavailable():
            depth, work, age_ms = self._queue_stats(
                keys=[self._queue(model, priority)], args=[GROUP, limit, self.prefix]
            )
        return int(depth), int(work), int(age_ms)

    # workers ----------------------------------------------------------------------------
    def heartbeat(self, model: str, worker_id: str, now: float | None = None) -> None:
        self._r.zadd(self._workers(model), {worker_id: now if now is not None else time.time()})

    def remove_worker(self, model: str, worker_id: str) -> None:
        self._r.zrem(self._workers(model), worker_id)

    def live_workers(self, model: str, within_seconds: float, now: float | None = None) -> int:
        now = now if now is not None else time.time()
        with _unavailable():
            return int(self._r.zcount(self._workers(model), now - within_seconds, "+inf"))

    # Every error of the store: Redis out of reach, restarting, full, read-only, refusing a
    # command. Workers back off on these and keep what they hold. Callers catch these rather
    # than importing redis themselves; ``RedisStore.fault`` says which kind it was.
    UNREACHABLE: ClassVar[tuple[type[Exception], ...]] = (redis.RedisError, Unavailable)

    @staticmethod
    def fault(error: BaseException) -> Fault:
        """What a store error means (see ``fault``)."""
        return fault(error)

    # results, exactly once ----------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A Redis error in the service's words: what clients are told and how callers react."""

    reason: str  # a stable word for details.reason: unreachable, timeout, loading, full, ...
    message: str  # for clients: what the store is doing, and that a retry is the remedy
    retry_after: float  # seconds, for Retry-After
    transient: bool  # out of reach or restarting (an outage), rather than refusing a command
    maybe_applied: bool  # no answer came back: the command may have run anyway
    error: str = ""  # the Redis error's type, for logs
    detail: str = ""  # and its message (a refused script's says which and where), for logs

    def unavailable(self, **details: Any) -> Unavailable:
        """The 503 for this fault; ``details`` are added to the body's details."""
        return Unavailable(self.message, {"reason": self.reason, **details}, retry_after=self.retry_after)


# Error codes redis-py leaves in the message of a plain ResponseError (it strips the codes it
# maps to classes); in a pipeline the message is prefixed, in a script suffixed.
_STATE_CODES = re.compile(r"(?:^|error: )(MISCONF|BUSY|NOREPLICAS|UNBLOCKED)\b")


def fault(error: BaseException) -> Fault:
    """The kind of a Redis error, or of the ``Unavailable`` raised for one.

    Every Redis error is a fault of the store, never of the request: the gateway answers 503
    with Retry-After, workers back off. Connection-level errors are an outage (``transient``);
    the others are the server refusing a command: full (``maxmemory`` with ``noeviction``),
    read-only, unable to persist, busy, or refusing it outright (which also covers a bug in
    one of our scripts: the log says which).
    """
    if isinstance(error, Unavailable) and isinstance(error.__cause__, redis.RedisError):
        error = error.__cause__
    return replace(_classify(error), error=type(error).__name__, detail=str(error)[:500])


def _classify(error: BaseException) -> Fault:
    exc = redis.exceptions
    code = _STATE_CODES.search(str(error))
    if isinstance(error, exc.BusyLoadingError):
        return Fault(
            "loading", "the job store is loading its data after a restart; retry shortly", 1, True, False
        )
    if isinstance(error, (exc.AuthenticationError, exc.AuthorizationError)):
        return Fault(
            "refused", "the job store refused this service's credentials; retry later", 5, False, False
        )
    if isinstance(error, redis.TimeoutError):
        return Fault("timeout", "the job store did not answer in time; retry shortly", 1, True, True)
    if isinstance(error, redis.ConnectionError):
        return Fault("unreachable", "the job store is unreachable; retry shortly", 1, True, True)
    if isinstance(error, exc.OutOfMemoryError):
        return Fault(
            "full", "the job store is full (maxmemory) and refuses new writes; retry later", 5, False, False
        )
    if isinstance(error, exc.ReadOnlyError):
        return Fault(
            "read_only",
            "the job store is read-only (a replica, or a failover); retry shortly",
            1,
            False,
            False,
        )
    if code is not None and code.group(1) == "MISCONF":
        return Fault(
            "cannot_persist",
            "the job store cannot write to its disk and refuses writes; retry later",
            5,
            False,
            False,
        )
    if code is not None or isinstance(error, (exc.TryAgainError, exc.ClusterDownError)):
        return Fault("busy", "the job store is busy; retry shortly", 1, False, False)
    if isinstance(error, exc.ResponseError):
        return Fault("refused", "the job store refused a request; retry later", 5, False, False)
    return Fault("error", "the job store failed; retry later", 5, False, False)


_REFUSAL_LOG_SECONDS = 10.0  # a full store refuses every submission: one line per kind this often
_refusals_logged: dict[str, float] = {}


@contextmanager
def _unavailable() -> Iterator[None]:
    """Any Redis error becomes the service's 503 (``fault``), never a hang or a 500.

    A refusal (not an outage) is logged with the error's type and message, at most once per
    kind every few seconds: a full store, or a broken script, must be visible to an operator.
    """
    try:
        yield
    except redis.RedisError as e:
        f = fault(e)
        if not f.transient:
            now = time.monotonic()
            if now - _refusals_logged.get(f.error, -_REFUSAL_LOG_SECONDS) >= _REFUSAL_LOG_SECONDS:
                _refusals_logged[f.error] = now
                log.warning(
                    "redis refused a command",
                    extra={"error": f.error, "detail": f.detail, "reason": f.reason},
                )
        raise f.unavailable() from e


_MUTABLE_FIELDS = ("started_at", "finished_at", "step", "attempts", "worker", "error", "image_count")


def _claimed(entry_id: Any, fields: dict[bytes, bytes], priority: Priority) -> Claimed:
    return Claimed(_s(entry_id), _s(fields[b"job"]), int(fields.get(b"work", 0)), priority)


def _higher(priority: Priority) -> tuple[Priority, ...]:
    return PRIORITIES[: PRIORITIES.index(priority)]


def _pairs(flat: list[Any]) -> dict[bytes, bytes]:
    """A Lua reply's flat [field, value, ...] list as the dict redis-py gives for entries."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _encode(job: Job) -> dict[str, str]:
    d: dict[str, str] = {
        "request": json.dumps(job.request.to_dict()),
        "status": job.status.value,
        "created_at": repr(job.created_at),
        "step": str(job.step),
        "attempts": str(job.attempts),
        "image_count": str(job.image_count),
        "owner": job.owner,
    }
    if job.started_at is not None:
        d["started_at"] = repr(job.started_at)
    if job.finished_at is not None:
        d["finished_at"] = repr(job.finished_at)
    if job.worker is not None:
        d["worker"] = job.worker
    if job.error is not None:
        d["error"] = json.dumps({"type": job.error.type, "message": job.error.message})
    return d


def _decode(job_id: str, raw: dict[bytes, bytes]) -> Job:
    f = {_s(k): _s(v) for k, v in raw.items()}
    err = json.loads(f["error"]) if "error" in f else None
    return Job(
        id=job_id,
        request=JobRequest.from_dict(json.loads(f["request"])),
        status=Status(f["status"]),
        created_at=float(f["created_at"]),
        started_at=float(f["started_at"]) if "started_at" in f else None,
        finished_at=float(f["finished_at"]) if "finished_at" in f else None,
        step=int(f.get("step", 0)),
        attempts=int(f.get("attempts", 0)),
        worker=f.get("worker"),
        error=JobError(err["type"], err["message"]) if err else None,
        image_count=int(f.get("image_count", 0)),
        entry_id=f.get("entry"),
        cancel_requested=f.get("cancel") == "1",
        owner=f.get("owner", ANONYMOUS),
    )
