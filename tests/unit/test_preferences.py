"""``Prefer: wait=N`` as RFC 7240 reads it: a hint, capped, never an error."""

from __future__ import annotations

import pytest

from service.deps import wait_preference


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        (None, None),
        ("", None),
        ("wait=5", 5.0),
        ("respond-async, wait=2.5", 2.5),
        ('wait="3"', 3.0),
        ("WAIT=4", 4.0),
        ("wait=1e9", 60.0),  # capped, not read as 1
        ("wait=inf", 60.0),
        ("wait=0", 0.0),
        ("wait=-3", None),
        ("wait=nan", None),
        ("wait=soon", None),
        ("return=minimal", None),
        ("x" * 5000 + ", wait=5", None),  # only the start of a huge header is read
        ("wait=7; foo=bar", 7.0),
    ],
)
def test_wait_preference(header: str | None, wait: float | None) -> None:
    assert wait_preference(header, 60.0) == wait
