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


def _row(
    steps: int, guidance: float, each: float = 0.97, every: float = 0.92, held_out: float = 0.85
) -> dict:
    held_in = {n: each for n in ("shape", "color", "background", "position", "size")} | {"all": every}
    return {"sampler": "dpmpp_2m", "steps": steps, "guidance_scale": guidance, "held-in": held_in,
            "held-out": {"all": held_out}}  # fmt: skip


def test_the_targets_are_judged_on_the_guided_8_step_rows_only() -> None:
    from tooling.evaluation.text_run import target_lines

    # Rows at other step counts or without guidance never decide, however bad.
    met = target_lines({"results": [_row(8, 3.0), _row(4, 3.0, each=0.1), _row(8, 1.0, every=0.1)]})
    assert len(met) == 1 and "**met**" in met[0]
    assert "**not met**" in target_lines({"results": [_row(8, 3.0, each=0.949)]})[0]
    assert "**not met**" in target_lines({"results": [_row(8, 3.0, every=0.89)]})[0]
    short = target_lines({"results": [_row(8, 3.0, held_out=0.79)]})[0]
    assert "**not met**" in short and "held-out all right 79.0%" in short
