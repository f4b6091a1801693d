"""Redis persistence: job records, the fair queue, results and worker heartbeats.

The only package that talks to Redis:

- ``keys``: where everything lives (the whole key layout, in one place);
- ``lua``: scripts with named KEYS and ARGV, and how they are sent;
- ``records``: job records, compare-and-set status changes, results, progress, cancels;
- ``admission``: the gateway's side: admission, the fair order, positions, the backlog;
- ``work_queue``: the workers' side: claims, leases, reclaims, dead letters, heartbeats;
- ``deliveries``: webhook deliveries (claimed under a lease, retried, dead letters, replays);
- ``feeds``: pub/sub announcements (new work to busy workers; terminal jobs and watched jobs'
  steps to the gateway);
- ``faults``: every Redis error translated, once;
- ``codec``, ``connection``: the record's fields, the clients.

Status changes are compare-and-set on the status the caller read, so a worker finishing a job
and a client cancelling it cannot both win. A record lives as long as its job is queued or
running, however long that takes; it (and its images) expire ``ttl`` seconds after the job
turns terminal.
"""

from __future__ import annotations

from typing import ClassVar

from diffq.store.admission import Admission, Limits, QueueStats, Submitted
from diffq.store.deliveries import Deliveries, Delivery
from diffq.store.faults import UNREACHABLE, Fault, fault
from diffq.store.feeds import Announcement, JobFeed, NewWork
from diffq.store.keys import GROUP, Keys
from diffq.store.records import JobRecords, ProgressFlags
from diffq.store.work_queue import Claim, Claimed, WorkQueue


class RedisStore(JobRecords, Admission, WorkQueue, Deliveries):
    """Everything the gateway and the workers ask of Redis, over one set of connections."""

    # Callers catch these rather than importing redis themselves (see ``faults``).
    UNREACHABLE: ClassVar[tuple[type[Exception], ...]] = UNREACHABLE

    @staticmethod
    def fault(error: BaseException) -> Fault:
        """What a store error means (see ``faults.fault``)."""
        return fault(error)


__all__ = [
    "GROUP",
    "Announcement",
    "Claim",
    "Claimed",
    "Delivery",
    "Fault",
    "JobFeed",
    "Keys",
    "Limits",
    "NewWork",
    "ProgressFlags",
    "QueueStats",
    "RedisStore",
    "Submitted",
    "fault",
]
