"""The gateway's side of the queue: admission, the fair order of waiting jobs, positions and
the backlog a scrape reports.

Fair order. Within a priority, workers take waiting jobs in order of a virtual finish time
(self-clocked weighted fair queueing): a new job starts at the later of the queue's virtual
time and its owner's previous finish, and finishes ``work / weight`` later, where work is its
denoiser evaluations and weight its owner's share. The virtual time is the finish time of the
job claimed last. One owner's jobs keep their order; an owner with much queued work has its
later jobs far in virtual time, so another owner's new job goes before them, and each owner
gets its weight's share of the workers' evaluations while it has jobs waiting. A queue
position is the job's rank in that order (plus the waiting jobs of higher priorities): a
later job of a lighter owner may still pass it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from diffq.errors import Overloaded, RateLimited, TooManyJobs, TooMuchQueuedWork
from diffq.eta import Backlog, Pace
from diffq.jobs import PRIORITIES, Job, Priority
from diffq.store.codec import encode, pairs, text
from diffq.store.connection import Connection
from diffq.store.faults import unavailable
from diffq.store.lua import Call, Script, run, run_async


@dataclass(frozen=True)
class Limits:
    """Admission bounds checked atomically with the submission; 0 means unbounded."""

    max_in_flight_per_owner: int = 0
    max_queued_evaluations: int = 0  # per model
    rate_per_second: float = 0.0  # submissions per owner; 0: no limit
    burst: int = 1
    max_queued_evaluations_per_owner: int = 0  # all models together
    weight: float = 1.0  # the owner's share in the fair order (see the module's docstring)


@dataclass(frozen=True)
class Submitted:
    """A new job's queue position, or the earlier job an idempotency key already created."""

    position: int | None = None  # the new job's queue position
    replay_of: str | None = None
    same_request: bool = True  # for a replay: was the request the same as the first time?


@dataclass(frozen=True)
class QueueStats:
    """A model's backlog: jobs not yet claimed by a worker and their denoiser work."""

    depth: int
    evaluations: int
    oldest_age_seconds: float | None  # None when nothing waits


# Admit and create a job in one atomic step (one round trip): replay an earlier submission
# with the same idempotency key; take a token from the owner's bucket; refuse when the owner
# holds its limit of unfinished jobs or of waiting work, or the model's waiting work would pass
# its bound; else write the record, place it in the fair order, count its work, announce it
# to busy workers when the model's queue was empty (a worker whose last claim found jobs
# left claims again anyway: one announcement per job would cost every worker a read per job),
# remember the idempotency key, and answer with its queue position. The
# bucket uses the server's clock, so gateways agree. The tail: KEYS, the waiting sets of higher
# priorities (for the position); ARGV, the record's field/value pairs.
SUBMIT = Script(
    (
        "job",
        "waiting",
        "vclock",
        "finish",
        "since",
        "inflight",
        "model_work",
        "owner_work",
        "idempotency",
        "rate",
    ),
    (
        "job_id",
        "ttl",
        "work",
        "now",
        "max_in_flight",
        "max_work",
        "max_owner_work",
        "use_idempotency",
        "fingerprint",
        "rate_per_second",
        "burst",
        "weight",
        "owner",
        "new_work_channel",
    ),
    """
if use_idempotency == '1' then
  local seen = redis.call('GET', idempotency)
  if seen then return {'replay', seen} end
end
local per_second, capacity = tonumber(rate_per_second), tonumber(burst)
if per_second > 0 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local b = redis.call('HMGET', rate, 'tokens', 'ts')
  local last = tonumber(b[2]) or clock
  local tokens = math.min(capacity, (tonumber(b[1]) or capacity) + (clock - last) * per_second)
  local wait = nil
  if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / per_second end
  redis.call('HSET', rate, 'tokens', tostring(tokens), 'ts', tostring(clock))
  redis.call('EXPIRE', rate, math.ceil(capacity / per_second) + 1)
  -- as a string: Lua numbers would be truncated to integers in the reply
  if wait then return {'rate_limited', tostring(wait)} end
end
local held = redis.call('ZCARD', inflight)
if tonumber(max_in_flight) > 0 and held >= tonumber(max_in_flight) then
  return {'too_many_jobs', tostring(held)}
end
local n = tonumber(work)
local queued = tonumber(redis.call('GET', model_work) or '0')
if tonumber(max_work) > 0 and queued + n > tonumber(max_work) then return {'overloaded', tostring(queued)} end
local mine = tonumber(redis.call('GET', owner_work) or '0')
if tonumber(max_owner_work) > 0 and mine + n > tonumber(max_owner_work) then
  return {'too_much_queued_work', tostring(mine)}
end
redis.call('HSET', job, unpack(ARGV, more_argv))
local now_v = tonumber(redis.call('GET', vclock) or '0')
local start = math.max(now_v, tonumber(redis.call('HGET', finish, owner) or '0'))
local tag = string.format('%.17g', start + n / tonumber(weight))
redis.call('HSET', finish, owner, tag)
redis.call('ZADD', waiting, tag, job_id)
redis.call('ZADD', since, math.floor(tonumber(now) * 1000), job_id)
redis.call('ZADD', inflight, now, job_id)
redis.call('INCRBY', model_work, n)
redis.call('INCRBY', owner_work, n)
if queued == 0 then redis.call('PUBLISH', new_work_channel, job_id) end
if use_idempotency == '1' then redis.call('SET', idempotency, job_id .. ' ' .. fingerprint, 'EX', ttl) end
local position = redis.call('ZRANK', waiting, job_id) + 1
for i = more_keys, #KEYS do position = position + redis.call('ZCARD', KEYS[i]) end
return {'ok', tostring(position)}
""",
)

# A waiting job's 1-based position: its rank in its priority's fair order plus the jobs
# waiting at higher priorities (the tail); 0 once claimed (or gone).
POSITION = Script(
    ("waiting",),
    ("job_id",),
    """
local rank = redis.call('ZRANK', waiting, job_id)
if not rank then return 0 end
local position = rank + 1
for i = more_keys, #KEYS do position = position + redis.call('ZCARD', KEYS[i]) end
return position
""",
)

# What waits in a model's queue: how many jobs, their denoiser work, and the oldest one's age
# in ms by the server's clock (-1 when none waits). Constant time in the backlog's length: a
# counter, a cardinality and the first member of a sorted set.
QUEUE_STATS = Script(
    ("since", "model_work"),
    (),
    """
local depth = redis.call('ZCARD', since)
local work = tonumber(redis.call('GET', model_work) or '0')
local first = redis.call('ZRANGE', since, 0, 0, 'WITHSCORES')
local age = -1
if first[2] then
  local t = redis.call('TIME')
  age = math.max(0, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(first[2]))
end
return {depth, work, age}
""",
)

# The paces of the model's workers heard from since ``since`` (unix seconds), as a flat
# [worker, value, ...] list; older entries (workers gone without saying so) are dropped.
PACES = Script(
    ("paces",),
    ("since",),
    """
local out = {}
local fields = redis.call('HGETALL', paces)
for i = 1, #fields, 2 do
  local at = tonumber(string.match(fields[i + 1], '(%S+)$') or '0')
  if at >= tonumber(since) then
    table.insert(out, fields[i]); table.insert(out, fields[i + 1])
  else
    redis.call('HDEL', paces, fields[i])
  end
end
return out
""",
)


class Admission(Connection):
    def submit(
        self,
        job: Job,
        limits: Limits = Limits(),
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Submitted:
        """Admit, persist and enqueue a new queued job, all or nothing.

        Raises ``RateLimited``, ``TooManyJobs``, ``TooMuchQueuedWork`` or ``Overloaded`` past
        ``limits``. With an idempotency key that this owner used before (within the TTL),
        nothing is written and the earlier job is returned instead; ``fingerprint`` tells
        whether the request was the same.
        """
        with unavailable():
            reply = run(self._r, self._submit(job, limits, idempotency_key, fingerprint))
        return _submitted(job, reply, fingerprint)

    async def submit_async(
        self,
        job: Job,
        limits: Limits = Limits(),
        idempotency_key: str | None = None,
        fingerprint: str = "",
    ) -> Submitted:
        """``submit`` on the asyncio connection: an async route needs no thread for it."""
        with unavailable():
            reply = await run_async(self._async(), self._submit(job, limits, idempotency_key, fingerprint))
        return _submitted(job, reply, fingerprint)

    def _submit(self, job: Job, limits: Limits, idempotency_key: str | None, fingerprint: str) -> Call:
        k, model, priority = self.keys, job.request.model, job.request.priority
        keys = {
            "job": k.job(job.id),
            "waiting": k.waiting(model, priority),
            "vclock": k.vclock(model, priority),
            "finish": k.finish(model, priority),
            "since": k.since(model),
            "inflight": k.inflight(job.owner),
            "model_work": k.work(model),
            "owner_work": k.owner_work(job.owner),
            "idempotency": k.idempotency(job.owner, idempotency_key or ""),
            "rate": k.rate(job.owner),
        }
        argv: dict[str, Any] = {
            "job_id": job.id,
            "ttl": self.ttl,
            "work": job.request.evaluations,
            "now": repr(job.created_at),
            "max_in_flight": limits.max_in_flight_per_owner,
            "max_work": limits.max_queued_evaluations,
            "max_owner_work": limits.max_queued_evaluations_per_owner,
            "use_idempotency": "1" if idempotency_key is not None else "",
            "fingerprint": fingerprint,
            "rate_per_second": limits.rate_per_second,
            "burst": limits.burst,
            "weight": repr(float(limits.weight)),
            "owner": job.owner,
            "new_work_channel": k.new_work_channel(model),
        }
        record = [x for pair in encode(job).items() for x in pair]
        return SUBMIT.bind(keys, argv, [k.waiting(model, p) for p in _higher(priority)], record)

    def queue_position(self, model: str, job_id: str, priority: Priority = Priority.NORMAL) -> int | None:
        """1-based position among the jobs not yet claimed, counting the waiting jobs of
        higher priorities first; None once claimed. Logarithmic in the backlog."""
        with unavailable():
            position = int(run(self._r, self._position(model, job_id, priority)))
        return position or None

    async def queue_position_async(
        self, model: str, job_id: str, priority: Priority = Priority.NORMAL
    ) -> int | None:
        """``queue_position`` on the asyncio connection."""
        with unavailable():
            position = int(await run_async(self._async(), self._position(model, job_id, priority)))
        return position or None

    def _position(self, model: str, job_id: str, priority: Priority) -> Call:
        k = self.keys
        return POSITION.bind(
            {"waiting": k.waiting(model, priority)},
            {"job_id": job_id},
            [k.waiting(model, p) for p in _higher(priority)],
        )

    async def backlog_async(self, model: str, within_seconds: float) -> Backlog:
        """What the model's estimates read: its queue (as ``queue_stats``) and the paces of the
        workers heard from within ``within_seconds``."""
        k = self.keys
        stats_call = QUEUE_STATS.bind({"since": k.since(model), "model_work": k.work(model)}, {})
        paces_call = PACES.bind({"paces": k.pace(model)}, {"since": time.time() - within_seconds})
        with unavailable():
            depth, work, _ = await run_async(self._async(), stats_call)
            flat = await run_async(self._async(), paces_call)
        paces = [p for p in map(_pace, pairs(flat).values()) if p is not None]
        return Backlog(int(depth), int(work), tuple(paces))

    def queue_stats(self, model: str) -> QueueStats:
        """The jobs waiting for a worker, all priorities: how many, their denoiser evaluations
        and the oldest one's age. Constant time in the backlog's length."""
        call = QUEUE_STATS.bind({"since": self.keys.since(model), "model_work": self.keys.work(model)}, {})
        with unavailable():
            depth, work, age_ms = run(self._r, call)
        return QueueStats(int(depth), int(work), int(age_ms) / 1000 if int(age_ms) >= 0 else None)


def _pace(value: Any) -> Pace | None:
    """A worker's published pace (``WorkQueue.heartbeat``); None for one this release cannot
    read (another version's, during a rolling upgrade): it just counts for nothing."""
    try:
        rate, step, full_rows, fixed, per_row, _at = text(value).split()
        return Pace(float(rate), float(step), int(full_rows), float(fixed), float(per_row))
    except ValueError:
        return None


def _higher(priority: Priority) -> tuple[Priority, ...]:
    return PRIORITIES[: PRIORITIES.index(priority)]


def _submitted(job: Job, reply: Any, fingerprint: str) -> Submitted:
    outcome, value = (text(x) for x in reply)
    if outcome == "replay":
        job_id, _, first_fingerprint = value.partition(" ")
        return Submitted(replay_of=job_id, same_request=first_fingerprint == fingerprint)
    if outcome == "rate_limited":
        raise RateLimited("too many submissions from this key; slow down", retry_after=float(value))
    if outcome == "too_many_jobs":
        raise TooManyJobs(
            f"this key has {value} unfinished jobs, its limit; wait for some to finish", retry_after=5
        )
    if outcome == "too_much_queued_work":
        raise TooMuchQueuedWork(
            f"this key's waiting jobs hold {value} denoiser evaluations, its share of the queue "
            "(DIFFQ_MAX_QUEUED_EVALUATIONS_PER_KEY); wait for some to start",
            retry_after=5,
        )
    if outcome == "overloaded":
        raise Overloaded(
            f"the queue of {job.request.model} is full ({value} denoiser evaluations wait); retry later",
            retry_after=5,
        )
    return Submitted(position=int(value))
