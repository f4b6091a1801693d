"""Fixtures for the Redis-layer tests: a store on the session's Valkey, one model's queue ready."""

from __future__ import annotations

import pytest

from diffq.store import RedisStore

MODEL = "m"  # the model name the store tests queue jobs for; no model file behind it


@pytest.fixture
def store(valkey: str, prefix: str) -> RedisStore:
    s = RedisStore(valkey, prefix=prefix, ttl_seconds=60)
    s.ensure_group(MODEL)
    return s
