"""Where everything lives in Redis: every key and channel name, built in this one place.

``<p>`` is the key prefix (``DIFFQ_KEY_PREFIX``), ``<m>`` a model, ``<q>`` a priority.

Jobs
- ``<p>:job:<id>``            hash: the job record (request JSON, status, times, progress, ...)
- ``<p>:job:<id>:images``     hash: image index -> PNG bytes

Waiting (the gateway's side: what no worker has claimed yet)
- ``<p>:waiting:<m>:<q>``     sorted set: job id -> virtual finish time (the fair order, below)
- ``<p>:vclock:<m>:<q>``      the virtual time: the finish time of the job claimed last
- ``<p>:finish:<m>:<q>``      hash: owner -> the finish time of that owner's latest job
- ``<p>:since:<m>``           sorted set: job id -> submit time in ms (depth and oldest age)
- ``<p>:work:<m>``            counter: denoiser evaluations of the model's waiting jobs
- ``<p>:owner-work:<owner>``  counter: denoiser evaluations of the owner's waiting jobs

Claimed (the workers' side)
- ``<p>:claimed:<m>``         stream: one entry per claimed job, in consumer group ``workers``:
                              its pending entries are the workers' leases
- ``<p>:workers:<m>``         sorted set: worker id -> last heartbeat (unix seconds)
- ``<p>:pace:<m>``            hash: worker id -> its pace (``diffq.eta.Pace``'s fields, then unix time)
- ``<p>:dead:<m>``            stream: jobs given up after too many deliveries (dead letters)

Admission
- ``<p>:inflight:<owner>``    sorted set: the owner's unfinished job ids, scored by submit time
- ``<p>:idem:<owner>:<h>``    the job id (and request fingerprint) an Idempotency-Key created
- ``<p>:rate:<owner>``        hash: the owner's submission token bucket

Webhooks (``webhooks.deliverer``)
- ``<p>:webhook:<w>``         hash: one delivery (job, event, url, owner, attempts, body, lease)
- ``<p>:webhook-due``         sorted set: delivery id -> when it is next due (ms); a claimed
                              delivery's score is its lease's end, so a crashed deliverer's
                              comes due again
- ``<p>:webhook-dead``        stream: deliveries given up after every retry (dead letters)

Channels
- ``<p>:done:<id>``           a job's terminal status (one pattern subscription per gateway)
- ``<p>:step:<id>``           a watched job's steps, as its worker writes them (event streams)
- ``<p>:new:<m>``             each submission, for busy workers (a hint, never the queue)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from diffq.jobs import Priority

GROUP = "workers"  # the consumer group of every model's claimed stream


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def images(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:images"

    def waiting(self, model: str, priority: Priority) -> str:
        return f"{self.prefix}:waiting:{model}:{priority.value}"

    def vclock(self, model: str, priority: Priority) -> str:
        return f"{self.prefix}:vclock:{model}:{priority.value}"

    def finish(self, model: str, priority: Priority) -> str:
        return f"{self.prefix}:finish:{model}:{priority.value}"

    def since(self, model: str) -> str:
        return f"{self.prefix}:since:{model}"

    def work(self, model: str) -> str:
        return f"{self.prefix}:work:{model}"

    def owner_work(self, owner: str) -> str:
        return f"{self.prefix}:owner-work:{owner}"

    @property
    def owner_work_prefix(self) -> str:
        """``owner_work`` without the owner: scripts that learn the owner from a record."""
        return self.owner_work("")

    @property
    def job_prefix(self) -> str:
        """``job`` without the id: scripts that learn job ids from a sorted set."""
        return self.job("")

    def claimed(self, model: str) -> str:
        return f"{self.prefix}:claimed:{model}"

    def workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def pace(self, model: str) -> str:
        return f"{self.prefix}:pace:{model}"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:webhook:{delivery_id}"

    @property
    def delivery_prefix(self) -> str:
        """``delivery`` without the id: the scripts that queue and claim deliveries."""
        return self.delivery("")

    @property
    def deliveries_due(self) -> str:
        return f"{self.prefix}:webhook-due"

    @property
    def deliveries_dead(self) -> str:
        return f"{self.prefix}:webhook-dead"

    def inflight(self, owner: str) -> str:
        return f"{self.prefix}:inflight:{owner}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def rate(self, owner: str) -> str:
        return f"{self.prefix}:rate:{owner}"

    def new_work_channel(self, model: str) -> str:
        return f"{self.prefix}:new:{model}"

    def done_channel(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    @property
    def done_channel_prefix(self) -> str:
        return self.done_channel("")

    def step_channel(self, job_id: str) -> str:
        return f"{self.prefix}:step:{job_id}"

    @property
    def step_channel_prefix(self) -> str:
        return self.step_channel("")
