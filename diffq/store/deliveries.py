"""Webhook deliveries: the delivering processes' side (``webhooks.deliverer``).

A status change queues its delivery itself (``records``: a hash and a due time, in the same
script), so this side only claims due deliveries and settles them. A claim is a lease: the
delivery's due time moves to the lease's end and its hash names the claim's token. Settling
(delivered, retry later, put back, give up) happens only under that token, so a deliverer
whose lease ran out (it hung, or died and came back) changes nothing another one now holds; a
delivery whose deliverer died comes due again when its lease ends. Delivery is at least once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffq.store.codec import pairs, text
from diffq.store.connection import Connection
from diffq.store.faults import unavailable
from diffq.store.lua import Script, run, run_async

# Claim up to ``count`` deliveries due by ``now_ms``: each one's due time becomes ``now_ms +
# lease_ms`` and its ``lease`` field ``token``. A due id without its hash (settled meanwhile)
# is dropped. Returns {id, fields} pairs.
CLAIM_DUE = Script(
    ("due",),
    ("prefix", "now_ms", "lease_ms", "count", "token"),
    """
local out = {}
local now = tonumber(now_ms)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(count))) do
  local h = prefix .. id
  if redis.call('EXISTS', h) == 0 then redis.call('ZREM', due, id)
  else
    redis.call('ZADD', due, now + tonumber(lease_ms), id)
    redis.call('HSET', h, 'lease', token)
    table.insert(out, {id, redis.call('HGETALL', h)})
  end
end
return out
""",
)

# Settle delivery ``id`` if ``token`` still holds its lease: ``done`` deletes it; ``retry``
# records the attempt (the ARGV tail: field pairs) and makes it due at ``due_ms``; ``dead``
# moves it, with the tail's fields, to the dead letters (``keep`` of them at most, roughly).
# 1 if settled, 0 if the lease was lost.
SETTLE = Script(
    ("due", "delivery", "dead"),
    ("id", "token", "outcome", "due_ms", "keep"),
    """
if redis.call('HGET', delivery, 'lease') ~= token then return 0 end
if outcome == 'retry' then
  redis.call('HDEL', delivery, 'lease')
  for i = more_argv, #ARGV, 2 do redis.call('HSET', delivery, ARGV[i], ARGV[i + 1]) end
  redis.call('ZADD', due, tonumber(due_ms), id)
  return 1
end
if outcome == 'dead' then
  local fields = redis.call('HGETALL', delivery)
  for i = more_argv, #ARGV do table.insert(fields, ARGV[i]) end
  table.insert(fields, 'id')
  table.insert(fields, id)
  redis.call('XADD', dead, 'MAXLEN', '~', tonumber(keep), '*', unpack(fields))
end
redis.call('DEL', delivery)
redis.call('ZREM', due, id)
return 1
""",
)

# Put claimed deliveries back, no attempt counted: those of the ARGV tail (id, token, due ms
# triples) whose lease the token still holds, each due at its time. Returns how many.
DEFER = Script(
    ("due",),
    ("prefix",),
    """
local n = 0
for i = more_argv, #ARGV, 3 do
  local h = prefix .. ARGV[i]
  if redis.call('HGET', h, 'lease') == ARGV[i + 1] then
    redis.call('HDEL', h, 'lease')
    redis.call('ZADD', due, tonumber(ARGV[i + 2]), ARGV[i])
    n = n + 1
  end
end
return n
""",
)

# Queue a dead letter's delivery again, due now, with its attempts reset; the letter is
# removed. 1 if the letter existed. The letter's last error and the lease are not carried.
REPLAY = Script(
    ("due", "dead"),
    ("entry", "prefix", "now_ms"),
    """
local got = redis.call('XRANGE', dead, entry, entry)
if #got == 0 then return 0 end
local f, id = got[1][2], nil
local fields = {}
for i = 1, #f, 2 do
  if f[i] == 'id' then id = f[i + 1]
  elseif f[i] ~= 'lease' and f[i] ~= 'error' and f[i] ~= 'attempts' then
    table.insert(fields, f[i]); table.insert(fields, f[i + 1])
  end
end
if not id then return 0 end
redis.call('DEL', prefix .. id)
redis.call('HSET', prefix .. id, 'attempts', '0', unpack(fields))
redis.call('ZADD', due, tonumber(now_ms), id)
redis.call('XDEL', dead, entry)
return 1
""",
)

KEEP_DEAD = 100_000  # dead letters kept (the oldest go first past it)


@dataclass(frozen=True)
class Delivery:
    """One claimed delivery: what to send where, and its history so far."""

    id: str  # the Standard Webhooks message id, the same for every attempt
    job_id: str
    event: str  # started, succeeded, failed, cancelled, expired
    url: str
    owner: str  # the API key whose secrets sign it
    attempts: int  # attempts made before this claim
    created_ms: int  # when the status change queued it
    body: bytes | None  # the job view, once the first attempt built it
    token: str  # this claim's lease

    @classmethod
    def from_fields(cls, delivery_id: str, fields: dict[str, str], token: str) -> Delivery:
        body = fields.get("body")
        return cls(
            id=delivery_id,
            job_id=fields.get("job", ""),
            event=fields.get("event", ""),
            url=fields.get("url", ""),
            owner=fields.get("owner", ""),
            attempts=int(fields.get("attempts", "0")),
            created_ms=int(fields.get("created_ms", "0")),
            body=body.encode() if body is not None else None,
            token=token,
        )


class Deliveries(Connection):
    async def claim_deliveries_async(self, count: int, lease_seconds: float, token: str) -> list[Delivery]:
        """Up to ``count`` due deliveries, leased to ``token`` for ``lease_seconds``."""
        if count <= 0:
            return []
        argv = {
            "prefix": self.keys.delivery_prefix,
            "now_ms": int(time.time() * 1000),
            "lease_ms": int(lease_seconds * 1000),
            "count": count,
            "token": token,
        }
        with unavailable():
            got = await run_async(self._async(), CLAIM_DUE.bind({"due": self.keys.deliveries_due}, argv))
        out = []
        for raw_id, flat in got:
            fields = {text(k): text(v) for k, v in pairs(flat).items()}
            out.append(Delivery.from_fields(text(raw_id), fields, token))
        return out

    async def settle_delivery_async(
        self, d: Delivery, outcome: str, due_at: float = 0.0, fields: dict[str, str] | None = None
    ) -> bool:
        """Settle ``d`` (``done``, ``retry`` at ``due_at`` with ``fields`` recorded, or ``dead``
        with ``fields`` added to the letter), if its lease is still ours."""
        if outcome not in ("done", "retry", "dead"):
            raise ValueError(f"unknown outcome {outcome!r}")
        k = self.keys
        keys = {"due": k.deliveries_due, "delivery": k.delivery(d.id), "dead": k.deliveries_dead}
        argv = {
            "id": d.id,
            "token": d.token,
            "outcome": outcome,
            "due_ms": int(due_at * 1000),
            "keep": KEEP_DEAD,
        }
        tail = [x for pair in (fields or {}).items() for x in pair]
        with unavailable():
            return bool(await run_async(self._async(), SETTLE.bind(keys, argv, more_argv=tail)))

    async def defer_deliveries_async(self, deferred: Sequence[tuple[Delivery, float]]) -> int:
        """Put the deliveries (still leased to their tokens) back, each due at its time, without
        counting an attempt: their receiver had no room. How many were put back."""
        if not deferred:
            return 0
        argv = {"prefix": self.keys.delivery_prefix}
        tail = [x for d, due_at in deferred for x in (d.id, d.token, int(due_at * 1000))]
        with unavailable():
            return int(
                await run_async(
                    self._async(), DEFER.bind({"due": self.keys.deliveries_due}, argv, more_argv=tail)
                )
            )

    async def deliveries_backlog_async(self) -> tuple[int, int]:
        """Deliveries queued or in flight, and dead letters."""
        with unavailable():
            pipe = self._async().pipeline(transaction=False)
            pipe.zcard(self.keys.deliveries_due)
            pipe.xlen(self.keys.deliveries_dead)
            queued, dead = await pipe.execute()
        return int(queued), int(dead)

    def dead_deliveries(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters first (``diffq webhooks dead-letters``): each with its
        ``entry`` (what ``replay_delivery`` takes) and its fields, the body as JSON."""
        with unavailable():
            entries = self._r.xrevrange(self.keys.deliveries_dead, count=count)
        out = []
        for entry, raw in entries:
            letter: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
            letter.pop("lease", None)
            if "body" in letter:
                letter["body"] = json.loads(letter["body"])
            out.append({"entry": text(entry), **letter})
        return out

    def replay_delivery(self, entry: str) -> bool:
        """Queue dead letter ``entry`` again, due now (``diffq webhooks replay``)."""
        argv = {"entry": entry, "prefix": self.keys.delivery_prefix, "now_ms": int(time.time() * 1000)}
        keys = {"due": self.keys.deliveries_due, "dead": self.keys.deliveries_dead}
        with unavailable():
            return bool(run(self._r, REPLAY.bind(keys, argv)))
