"""``unless_gone``: a wait raced against the client going away, without an event loop left
holding either side."""

from __future__ import annotations

import asyncio

import pytest

from service.job_ops import unless_gone


def test_a_client_that_goes_first_stops_the_wait() -> None:
    async def run() -> tuple[bool, bool]:
        stopped = asyncio.Event()

        async def wait() -> None:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()  # cancelled, so its slot and registration are let go

        went = await asyncio.wait_for(unless_gone(wait(), lambda: asyncio.sleep(0.01)), 5)
        return went, stopped.is_set()

    assert asyncio.run(run()) == (True, True)


def test_a_wait_that_ends_first_stops_watching_the_client() -> None:
    async def run() -> tuple[bool, bool]:
        watching = asyncio.Event()

        async def gone() -> None:
            try:
                await asyncio.sleep(30)
            finally:
                watching.set()

        went = await asyncio.wait_for(unless_gone(asyncio.sleep(0.01), gone), 5)
        return went, watching.is_set()

    assert asyncio.run(run()) == (False, True)


def test_a_failed_wait_raises() -> None:
    async def fail() -> None:
        raise RuntimeError("the wait's own error")

    with pytest.raises(RuntimeError, match="own error"):
        asyncio.run(unless_gone(fail(), lambda: asyncio.sleep(30)))
