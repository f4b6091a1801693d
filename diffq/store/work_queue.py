"""The workers' side of the queue: claims in the fair order, leases, reclaims, dead letters
and heartbeats.

A claim moves jobs from the waiting sets (``admission``) into the model's claimed stream and
delivers them to the claiming worker in the same atomic step. From then on the stream's
pending entries are leases: a worker renews its own, and one idle past its lease (its worker
died or hung) is taken over by another. An entry is acked and deleted once its job is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from diffq.eta import Pace
from diffq.jobs import PRIORITIES, Job, Priority
from diffq.store.codec import decode, pairs, text
from diffq.store.connection import Connection
from diffq.store.faults import unavailable
from diffq.store.feeds import NewWork
from diffq.store.keys import GROUP
from diffq.store.lua import TAKE_FN, Script, run


@dataclass(frozen=True)
class Claimed:
    """A job handed to a worker, with the stream entry to renew and ack."""

    entry_id: str
    job_id: str
    priority: Priority = Priority.NORMAL
    # The job's record as of the claim (a claim reads it in the same step); None from a
    # reclaim, or when the record is gone.
    record: Job | None = field(default=None, compare=False, repr=False)


# Claim up to ``want`` jobs for ``consumer``: pop them from the waiting sets in the fair order,
# higher priorities first (the tail: each priority's waiting set and virtual clock, with the
# priority's name in the ARGV tail), take their work off the counters, add an entry each to
# the claimed stream and deliver the stream's undelivered entries to the consumer; as {entry,
# fields, record} triples, with the model's work still waiting after the claim (the worker's
# backlog signal). Never blocks (an idle worker waits on announcements instead).
CLAIM = Script(
    ("claimed", "since", "model_work"),
    ("group", "consumer", "want", "job_prefix", "owner_work_prefix"),
    TAKE_FN
    + """
if redis.call('EXISTS', claimed) == 0 then redis.call('XGROUP', 'CREATE', claimed, group, '0', 'MKSTREAM') end
local left = tonumber(want)
for i = more_keys, #KEYS, 2 do
  if left <= 0 then break end
  local priority = ARGV[more_argv + (i - more_keys) / 2]
  local popped = redis.call('ZPOPMIN', KEYS[i], left)
  for j = 1, #popped, 2 do
    local id = popped[j]
    redis.call('SET', KEYS[i + 1], popped[j + 1])  -- the virtual time: the claimed job's finish
    redis.call('ZREM', since, id)
    local f = redis.call('HMGET', job_prefix .. id, 'work', 'owner')
    local n = tonumber(f[1]) or 0
    take(model_work, n)
    if f[2] then take(owner_work_prefix .. f[2], n) end
    redis.call('XADD', claimed, '*', 'job', id, 'priority', priority)
    left = left - 1
  end
end
local out = {}
local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'STREAMS', claimed, '>')
if got and got[1] then
  for _, e in ipairs(got[1][2]) do
    local id = nil
    for k = 1, #e[2], 2 do if e[2][k] == 'job' then id = e[2][k + 1] end end
    table.insert(out, {e[1], e[2], id and redis.call('HGETALL', job_prefix .. id) or {}})
  end
end
return {out, tonumber(redis.call('GET', model_work)) or 0}
""",
)

# Renew a lease: reset the idle time of the entries (the ARGV tail) that ``consumer`` still
# holds; return those it does not (taken over by another worker, or acked). XCLAIM alone would
# take them from whoever holds them now.
RENEW = Script(
    ("claimed",),
    ("group", "consumer"),
    """
local held = {}
for _, p in ipairs(redis.call('XPENDING', claimed, group, '-', '+', 10000, consumer)) do
  held[p[1]] = true
end
local mine, gone = {}, {}
for i = more_argv, #ARGV do
  if held[ARGV[i]] then table.insert(mine, ARGV[i]) else table.insert(gone, ARGV[i]) end
end
if #mine > 0 then
  -- JUSTID: a renewal resets the idle time without counting as another delivery
  local args = {'XCLAIM', claimed, group, consumer, 0}
  for _, id in ipairs(mine) do table.insert(args, id) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return gone
""",
)


@dataclass(frozen=True)
class Claim:
    """What one claim took, and the denoiser evaluations still waiting for any worker."""

    entries: list[Claimed]
    queued_evaluations: int


class WorkQueue(Connection):
    def ensure_group(self, model: str) -> None:
        try:
            self._r.xgroup_create(self.keys.claimed(model), GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def claim(self, model: str, consumer: str, count: int) -> list[Claimed]:
        """Up to ``count`` waiting jobs for this consumer, in the fair order, higher
        priorities first, each with its record: fewer than ``count`` means no more wait."""
        return self.claim_batch(model, consumer, count).entries

    def claim_batch(self, model: str, consumer: str, count: int) -> Claim:
        """``claim``, with the work left waiting after it, in the same round trip."""
        if count <= 0:
            return Claim([], self.queued_evaluations(model))
        k = self.keys
        call = CLAIM.bind(
            {"claimed": k.claimed(model), "since": k.since(model), "model_work": k.work(model)},
            {
                "group": GROUP,
                "consumer": consumer,
                "want": count,
                "job_prefix": k.job_prefix,
                "owner_work_prefix": k.owner_work_prefix,
            },
            [key for p in PRIORITIES for key in (k.waiting(model, p), k.vclock(model, p))],
            [p.value for p in PRIORITIES],
        )
        delivered, queued = run(self._r, call)
        out = []
        for entry_id, fields, record in delivered:
            claimed = _claimed(entry_id, pairs(fields))
            job = decode(claimed.job_id, pairs(record)) if record else None
            out.append(Claimed(claimed.entry_id, claimed.job_id, claimed.priority, job))
        return Claim(out, int(queued))

    def queued_evaluations(self, model: str) -> int:
        """The denoiser evaluations of the model's jobs that no worker has claimed yet."""
        return int(self._r.get(self.keys.work(model)) or 0)

    def ack(self, model: str, entries: Sequence[Claimed]) -> None:
        """Done with these entries: acknowledged and deleted from the stream."""
        if not entries:
            return
        ids = [c.entry_id for c in entries]
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(self.keys.claimed(model), GROUP, *ids)
        pipe.xdel(self.keys.claimed(model), *ids)
        pipe.execute()

    def renew(self, model: str, consumer: str, entries: Sequence[Claimed]) -> list[Claimed]:
        """Reset the idle time of the entries this consumer still holds: its lease on them.

        Returns the entries it no longer holds (another worker took them over after this one
        went quiet past its lease, or they were acked): the caller must let those go.
        """
        if not entries:
            return []
        call = RENEW.bind(
            {"claimed": self.keys.claimed(model)},
            {"group": GROUP, "consumer": consumer},
            more_argv=[c.entry_id for c in entries],
        )
        gone = {text(g) for g in run(self._r, call)}
        return [c for c in entries if c.entry_id in gone]

    def reclaim(self, model: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Claimed]:
        """Take over entries idle for ``min_idle_ms`` (their worker died or hung)."""
        res = self._r.xautoclaim(self.keys.claimed(model), GROUP, consumer, min_idle_ms, "0-0", count=count)
        entries = res[1] if len(res) > 1 else []
        return [_claimed(eid, fields) for eid, fields in entries if fields]

    def dead_letter(self, model: str, job_id: str, attempts: int, keep: int = 10_000) -> None:
        """Record a job given up on, for an operator to inspect (the newest ``keep`` are kept)."""
        fields = {"job": job_id, "attempts": attempts, "at": repr(time.time())}
        self._r.xadd(self.keys.dead(model), fields, maxlen=keep, approximate=True)

    def dead_letters(self, model: str, count: int = 100) -> list[dict[str, str]]:
        """The newest dead letters first (``diffq dead-letters``)."""
        with unavailable():
            entries = self._r.xrevrange(self.keys.dead(model), count=count)
        return [{text(k): text(v) for k, v in fields.items()} for _eid, fields in entries]

    def new_work(self, model: str) -> NewWork:
        """A subscription to the model's submissions (see ``NewWork``)."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        with unavailable():
            pubsub.subscribe(self.keys.new_work_channel(model))
        return NewWork(pubsub)

    def heartbeat(
        self, model: str, worker_id: str, now: float | None = None, pace: Pace | None = None
    ) -> None:
        """The worker is alive at ``now``; with ``pace``, how fast it goes (for estimates)."""
        now = now if now is not None else time.time()
        if pace is None:
            self._r.zadd(self.keys.workers(model), {worker_id: now})
            return
        pipe = self._r.pipeline(transaction=False)
        pipe.zadd(self.keys.workers(model), {worker_id: now})
        value = (
            f"{pace.rows_per_second:.6g} {pace.step_seconds:.6g} {pace.full_rows} {pace.fixed_seconds:.6g} "
            f"{pace.per_row_seconds:.6g} {now:.3f}"
        )
        pipe.hset(self.keys.pace(model), worker_id, value)
        pipe.execute()

    def remove_worker(self, model: str, worker_id: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.zrem(self.keys.workers(model), worker_id)
        pipe.hdel(self.keys.pace(model), worker_id)
        pipe.execute()

    def live_workers(self, model: str, within_seconds: float, now: float | None = None) -> int:
        now = now if now is not None else time.time()
        with unavailable():
            return int(self._r.zcount(self.keys.workers(model), now - within_seconds, "+inf"))


def _claimed(entry_id: Any, fields: dict[bytes, bytes]) -> Claimed:
    priority = Priority(text(fields.get(b"priority", b"normal")))
    return Claimed(text(entry_id), text(fields[b"job"]), priority)
