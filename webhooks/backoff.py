"""When a failed delivery is tried again: the Standard Webhooks schedule, with jitter.

Attempt 1 goes at once; after it fails, the next come 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
10 h later (about 27 hours in all), each delay drawn within 20% either side so receivers that
came back together are not hit together. After the last a delivery is a dead letter.
"""

from __future__ import annotations

import random

DELAYS_SECONDS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
MAX_ATTEMPTS = len(DELAYS_SECONDS) + 1
JITTER = 0.2


def retry_delay(failed_attempts: int, rng: random.Random) -> float | None:
    """Seconds until the next attempt after ``failed_attempts`` (1-based) failed in a row, or
    None: give up (the delivery goes to the dead letters)."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    if failed_attempts >= MAX_ATTEMPTS:
        return None
    base = DELAYS_SECONDS[failed_attempts - 1]
    return base * rng.uniform(1 - JITTER, 1 + JITTER)
