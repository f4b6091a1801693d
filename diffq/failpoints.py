"""Failpoints: named places in the code where a fault test can make the process die on purpose.

A test arms them by name in ``DIFFQ_FAILPOINTS`` (comma-separated); the process reads that
once at start-up through its settings and holds a ``Failpoints``. Reaching an armed point
ends the process at once with status 137, as a SIGKILL would: no ``finally`` blocks, no
flushing, no goodbye to Redis. Nothing is armed by default, and an unarmed ``hit`` is one set
lookup, so the calls stay in production code.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger("diffq.failpoints")

# Every place that calls ``hit``; arming another name is a typo, refused at start-up.
AFTER_STORE_BEFORE_ACK = "after_store_before_ack"  # a job's images and status stored, not acked
KNOWN = frozenset({AFTER_STORE_BEFORE_ACK})

KILLED_STATUS = 137  # what a shell reports for a process ended by SIGKILL (128 + 9)


def parse(spec: str) -> frozenset[str]:
    """The names in a comma-separated spec; raises ``ValueError`` naming any unknown one."""
    names = frozenset(n.strip() for n in spec.split(",") if n.strip())
    unknown = sorted(names - KNOWN)
    if unknown:
        raise ValueError(f"unknown failpoints {unknown}; known: {sorted(KNOWN)}")
    return names


@dataclass(frozen=True)
class Failpoints:
    armed: frozenset[str] = frozenset()

    def hit(self, name: str) -> None:
        """End the process here, now, if ``name`` is armed."""
        if name in self.armed:
            log.warning("failpoint hit; exiting", extra={"failpoint": name})
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os._exit(KILLED_STATUS)
