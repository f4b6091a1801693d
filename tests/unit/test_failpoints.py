"""Failpoints: armed only by name, read once from the worker's settings, and a hit ends the
process on the spot with SIGKILL's status (no cleanup runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from diffq import failpoints
from diffq.failpoints import AFTER_STORE_BEFORE_ACK, Failpoints
from workers.config import WorkerSettings


def test_parse_takes_known_names_and_ignores_blanks() -> None:
    assert failpoints.parse("") == frozenset()
    assert failpoints.parse(f" {AFTER_STORE_BEFORE_ACK} ,, ") == {AFTER_STORE_BEFORE_ACK}


def test_an_unknown_name_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="after_stor_before_ack"):
        failpoints.parse("after_stor_before_ack")


def test_worker_settings_read_them_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().failpoints == frozenset()
    monkeypatch.setenv("DIFFQ_FAILPOINTS", AFTER_STORE_BEFORE_ACK)
    assert WorkerSettings().failpoints == {AFTER_STORE_BEFORE_ACK}
    monkeypatch.setenv("DIFFQ_FAILPOINTS", "no_such_point")
    with pytest.raises(ValidationError, match="no_such_point"):
        WorkerSettings()


def test_an_unarmed_point_does_nothing() -> None:
    Failpoints().hit(AFTER_STORE_BEFORE_ACK)
    Failpoints(frozenset({AFTER_STORE_BEFORE_ACK})).hit("somewhere_else")


HIT = f"""
from diffq.failpoints import Failpoints
try:
    Failpoints(frozenset({{{AFTER_STORE_BEFORE_ACK!r}}})).hit({AFTER_STORE_BEFORE_ACK!r})
    print("went on")
finally:
    print("cleaned up")
"""


def test_an_armed_point_kills_the_process_without_cleanup() -> None:
    out = subprocess.run([sys.executable, "-c", HIT], capture_output=True, text=True, timeout=60)
    assert out.returncode == failpoints.KILLED_STATUS == 137
    assert out.stdout == ""
