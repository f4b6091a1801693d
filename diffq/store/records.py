"""Job records: reads, compare-and-set status changes (with their bookkeeping), results,
progress, cancel and watch flags, and the announcements that wake waiting requests and event
streams."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff

from diffq.jobs import Job
from diffq.store.codec import MUTABLE_FIELDS, decode, mutable_fields, text
from diffq.store.connection import CLIENT_OPTIONS, Connection
from diffq.store.faults import unavailable
from diffq.store.feeds import JobFeed
from diffq.store.lua import TAKE_FN, Call, Script, run, run_async, run_many

# Compare-and-set the status (``expected`` -> ``status``) and set the changed fields (pairs from
# ARGV[pairs_from]; '' deletes). Keeps the books too: a job leaving the waiting set unclaimed
# (cancelled or expired in the queue) takes its work off the model's and the owner's counters
# (a claimed one left them when claimed); a terminal job leaves its owner's in-flight set, is
# announced on its channel, and its record and images expire after ``ttl``. A live job's
# record never expires. A job whose webhook asks for the event (``started`` for running, else
# the status) has a delivery queued, due now, in the same step: no status change can happen
# without its delivery, nor a delivery without it. Its id is the same however often the
# script runs for that change (``started`` counts the attempt), so a receiver can dedupe.
_TRANSITION_KEYS = (
    "job",
    "images",
    "inflight",
    "model_work",
    "owner_work",
    "waiting",
    "since",
    "channel",
    "deliveries_due",
)
_TRANSITION_ARGV = ("expected", "status", "ttl", "job_id", "work", "terminal", "delivery_prefix")
_TRANSITION_FN = (
    TAKE_FN
    + """
local function transition(pairs_from)
  local cur = redis.call('HGET', job, 'status')
  if not cur then return false end
  if cur ~= expected then return cur end
  redis.call('HSET', job, 'status', status)
  for i = pairs_from, #ARGV, 2 do
    if ARGV[i + 1] == '' then redis.call('HDEL', job, ARGV[i])
    else redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
  end
  if redis.call('ZREM', waiting, job_id) == 1 then
    redis.call('ZREM', since, job_id)
    take(model_work, work)
    take(owner_work, work)
  end
  if terminal == '1' then
    redis.call('EXPIRE', job, ttl)
    if redis.call('EXISTS', images) == 1 then redis.call('EXPIRE', images, ttl) end
    redis.call('ZREM', inflight, job_id)
    redis.call('PUBLISH', channel, status)
  else
    redis.call('PERSIST', job)
  end
  local hook = redis.call('HMGET', job, 'webhook', 'webhook_events', 'owner', 'attempts')
  local event = status == 'running' and 'started' or status
  if hook[1] and string.find(',' .. (hook[2] or '') .. ',', ',' .. event .. ',', 1, true) then
    local id = 'msg_' .. job_id .. '_' .. event
    if event == 'started' then id = id .. '_' .. (hook[4] or '0') end
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('HSET', delivery_prefix .. id, 'job', job_id, 'event', event, 'url', hook[1],
      'owner', hook[3] or '', 'attempts', '0', 'created_ms', now_ms)
    redis.call('ZADD', deliveries_due, 'NX', now_ms, id)
  end
  return 'OK'
end
"""
)
TRANSITION = Script(_TRANSITION_KEYS, _TRANSITION_ARGV, "return transition(more_argv)", _TRANSITION_FN)

# A job's images and its status change in one step: the ``count`` PNGs first in the tail,
# then the transition's field pairs. The images are written only if the status is still the
# expected one (running): once a job has succeeded (whichever worker won), a late worker that
# ran it too changes nothing.
STORE_RESULT = Script(
    _TRANSITION_KEYS,
    (*_TRANSITION_ARGV, "count"),
    """
local n = tonumber(count)
local cur = redis.call('HGET', job, 'status')
if cur ~= expected then return cur end
redis.call('DEL', images)
for i = 0, n - 1 do redis.call('HSET', images, tostring(i), ARGV[more_argv + i]) end
return transition(more_argv + n)
""",
    _TRANSITION_FN,
)

# Each running job's step (the i-th record of the tail gets the i-th step), on records that
# still exist. A job watched by an event stream (its ``watch`` field, a unix time, not past
# ``now``) has the step announced on its step channel. Returns the 1-based indices of the jobs
# whose cancel was requested, and of the watched ones.
SET_PROGRESS = Script(
    (),
    ("now", "job_prefix", "step_prefix"),
    """
local cancelled, watched = {}, {}
local t = tonumber(now)
for i = more_keys, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local step = ARGV[more_argv + i - more_keys]
    redis.call('HSET', KEYS[i], 'step', step)
    local flags = redis.call('HMGET', KEYS[i], 'cancel', 'watch')
    if flags[1] == '1' then table.insert(cancelled, i) end
    if flags[2] and tonumber(flags[2]) >= t then
      table.insert(watched, i)
      redis.call('PUBLISH', step_prefix .. string.sub(KEYS[i], #job_prefix + 1), step)
    end
  end
end
return {cancelled, watched}
""",
)

# Flag a running job's cancel; never resurrect an expired record as a fragment.
REQUEST_CANCEL = Script(
    ("job",),
    (),
    "if redis.call('EXISTS', job) == 1 then redis.call('HSET', job, 'cancel', '1') end return 1",
)

# Mark a live job watched by an event stream until ``watch_until`` (unix seconds; the later mark wins):
# its worker then announces every step. Nothing for a terminal or expired record.
WATCH = Script(
    ("job",),
    ("watch_until",),
    """
local status = redis.call('HGET', job, 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
local cur = tonumber(redis.call('HGET', job, 'watch') or '0')
if tonumber(watch_until) > cur then redis.call('HSET', job, 'watch', watch_until) end
return 1
""",
)


@dataclass(frozen=True)
class ProgressFlags:
    """What a progress write learnt of the jobs it wrote."""

    cancelled: set[str]  # a cancel was requested: the worker stops them at the next step
    watched: set[str]  # an event stream follows them: the worker announces every step


class JobRecords(Connection):
    def get(self, job_id: str) -> Job | None:
        with unavailable():
            raw = self._r.hgetall(self.keys.job(job_id))
        return decode(job_id, raw) if raw else None

    async def get_async(self, job_id: str) -> Job | None:
        """``get`` on the asyncio connection."""
        with unavailable():
            raw = await self._async().hgetall(self.keys.job(job_id))
        return decode(job_id, raw) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        with unavailable():
            pipe = self._r.pipeline(transaction=False)
            for j in job_ids:
                pipe.hgetall(self.keys.job(j))
            raws = pipe.execute()
        return [decode(j, raw) if raw else None for j, raw in zip(job_ids, raws, strict=True)]

    def save_transition(self, before: Job, after: Job) -> bool:
        """Write ``after`` if the stored status is still ``before.status``.

        False when the status moved on meanwhile (or the record expired): the caller lost the
        race and must re-read before deciding anything.
        """
        return self.save_transitions([(before, after)])[0]

    async def save_transition_async(self, before: Job, after: Job) -> bool:
        """``save_transition`` on the asyncio connection."""
        with unavailable():
            reply = await run_async(self._async(), self._transition(TRANSITION, before, after))
        return reply is not None and text(reply) == "OK"

    def save_transitions(self, changes: Sequence[tuple[Job, Job]]) -> list[bool]:
        """``save_transition`` for many jobs in one round trip; each is its own compare-and-set."""
        calls = [self._transition(TRANSITION, before, after) for before, after in changes]
        return self._all_ok(calls)

    def store_results(self, results: Sequence[tuple[Job, Job, Sequence[bytes]]]) -> list[bool]:
        """For each (running record, succeeded record, PNGs): the images and the status change
        in one step, if the job is still running; all in one round trip. False, with nothing
        written, for a job that is terminal, back in the queue or gone."""
        calls = [self._transition(STORE_RESULT, before, after, pngs) for before, after, pngs in results]
        return self._all_ok(calls)

    def _all_ok(self, calls: list[Call]) -> list[bool]:
        if not calls:
            return []
        with unavailable():
            replies = run_many(self._r, calls)
        return [r is not None and text(r) == "OK" for r in replies]

    def _transition(self, script: Script, before: Job, after: Job, pngs: Sequence[bytes] = ()) -> Call:
        changed, old = mutable_fields(after), mutable_fields(before)
        fields: list[Any] = []
        for name in MUTABLE_FIELDS:
            # A record names the worker that made its last change even where the caller's copy
            # is older than the stored one (another worker took the job over meanwhile).
            if changed.get(name, "") != old.get(name, "") or (name == "worker" and changed.get(name)):
                fields += [name, changed.get(name, "")]
        argv: dict[str, Any] = {
            "expected": before.status.value,
            "status": after.status.value,
            "ttl": self.ttl,
            "job_id": after.id,
            "work": after.request.evaluations,
            "terminal": "1" if after.terminal else "",
            "delivery_prefix": self.keys.delivery_prefix,
        }
        if script is STORE_RESULT:
            argv["count"] = len(pngs)
        model, k = after.request.model, self.keys
        keys = {
            "job": k.job(after.id),
            "images": k.images(after.id),
            "inflight": k.inflight(after.owner),
            "model_work": k.work(model),
            "owner_work": k.owner_work(after.owner),
            "waiting": k.waiting(model, after.request.priority),
            "since": k.since(model),
            "channel": k.done_channel(after.id),
            "deliveries_due": k.deliveries_due,
        }
        return script.bind(keys, argv, more_argv=[*pngs, *fields])

    def set_progress(self, steps: dict[str, int], now: float) -> ProgressFlags:
        """Record each running job's step (announcing those of watched jobs), and learn which
        jobs' cancel was requested and which are watched: the worker's one round trip per step
        for the whole batch. ``now``: unix time, against the watch marks."""
        if not steps:
            return ProgressFlags(set(), set())
        ids = list(steps)
        argv = {"now": now, "job_prefix": self.keys.job_prefix, "step_prefix": self.keys.step_channel_prefix}
        call = SET_PROGRESS.bind({}, argv, [self.keys.job(j) for j in ids], list(steps.values()))
        cancelled, watched = run(self._r, call)
        return ProgressFlags({ids[int(i) - 1] for i in cancelled}, {ids[int(i) - 1] for i in watched})

    async def watch_async(self, job_id: str, until: float) -> None:
        """Mark a live job watched by an event stream until ``until`` (unix seconds)."""
        with unavailable():
            await run_async(
                self._async(), WATCH.bind({"job": self.keys.job(job_id)}, {"watch_until": int(until)})
            )

    async def request_cancel_async(self, job_id: str) -> None:
        """Flag a running job's cancel (its worker stops it at the next step)."""
        with unavailable():
            await run_async(self._async(), REQUEST_CANCEL.bind({"job": self.keys.job(job_id)}, {}))

    def get_image(self, job_id: str, index: int) -> bytes | None:
        with unavailable():
            data = self._r.hget(self.keys.images(job_id), str(index))
        return bytes(data) if data is not None else None

    async def get_image_async(self, job_id: str, index: int) -> bytes | None:
        """``get_image`` on the asyncio connection."""
        with unavailable():
            data = await self._async().hget(self.keys.images(job_id), str(index))
        return bytes(data) if data is not None else None

    async def get_images_async(self, job_id: str, count: int) -> list[bytes | None]:
        """A job's first ``count`` images in one round trip (None for one that is gone)."""
        if count <= 0:
            return []
        with unavailable():
            data = await self._async().hmget(self.keys.images(job_id), [str(i) for i in range(count)])
        return [bytes(d) if d is not None else None for d in data]

    async def job_feed(self) -> JobFeed:
        """A subscription to every job's terminal announcement (``<p>:done:*``) and watched
        jobs' steps (``<p>:step:*``) on a connection of its own, never one of the pool's: one
        per gateway process serves all its waiting requests and event streams
        (``service/waiters.py``). Returns once Valkey confirmed the subscriptions, so any job
        that turns terminal after this returns is announced on it. Redis errors are raised
        untranslated (the caller reconnects)."""
        client = redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            # No silent reconnect: a lost subscription must surface, so that the waiters
            # (whose announcements may have been missed meanwhile) read their jobs again.
            retry=redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
            **CLIENT_OPTIONS,
        )
        pubsub = client.pubsub()
        feed = JobFeed(
            client, pubsub, self.keys.done_channel_prefix, self.keys.step_channel_prefix, self._timeout
        )
        try:
            await pubsub.psubscribe(*feed.patterns)
            await feed.confirmed()
        except BaseException:
            await feed.aclose()
            raise
        return feed
