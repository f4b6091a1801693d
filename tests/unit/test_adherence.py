"""Prompt-adherence scoring: only requested attributes count."""

from __future__ import annotations

import pytest

from tooling.evaluation.adherence import adherence

FULL = {"shape": "circle", "color": "red", "background": "black", "position": "left", "size": "small"}


def test_only_requested_attributes_are_scored() -> None:
    requested = [{"shape": "circle", "color": "red"}, {"shape": "square", "position": "top"}]
    read = [FULL, {**FULL, "shape": "square", "position": "bottom"}]
    got = adherence(requested, read)
    assert got["shape"] == 1.0
    assert got["color"] == 1.0
    assert got["position"] == 0.0
    assert got["background"] is None and got["size"] is None
    assert got["all"] == 0.5


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError):
        adherence([FULL], [])
