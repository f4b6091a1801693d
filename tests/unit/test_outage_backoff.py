"""While Redis is unreachable a worker retries quickly at first, then at most every 5 s."""

from __future__ import annotations

import pytest

from workers.worker import BACKOFF_MAX_SECONDS, outage_backoff


def test_backoff_doubles_from_a_tenth_of_a_second_up_to_its_cap() -> None:
    waits = [outage_backoff(n) for n in range(1, 10)]
    assert waits[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert waits[6:] == [BACKOFF_MAX_SECONDS] * 3 == [5.0] * 3
    assert outage_backoff(10**6) == 5.0  # a day-long outage does not overflow
