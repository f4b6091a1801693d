"""The pipeline-stages benchmark's pure parts: the in-process replay of a text model through the
worker's TextEncoder and Decoder, the time shares, and curves on a stage's own clock.

Stand-in components (no ONNX, no tooling): the tiny pipeline itself is built by `make bench`.
No timing assertions: speed is measured by `make bench`, never asserted here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.inprocess import DECODE, DENOISER, PNG, REST, STAGES, TEXT, Run, StageTime, run_jobs, stage_shares
from bench.stages import curve_rates, stage_curve
from bench.workload import job_mix, text_mix
from model_store.manifest import LatentSpec
from model_store.store import ModelStore
from workers.engine import CallStats
from workers.pipeline import Decoder, TextEncoder

SEQ, DIM = 4, 3


class FakeTokenizer:
    """Each distinct text gets its own id, repeated over the sequence."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode_batch(self, texts: list[str]) -> list[SimpleNamespace]:
        return [SimpleNamespace(ids=[self.ids.setdefault(t, len(self.ids) + 1)] * SEQ) for t in texts]


class FakeComponent:
    """A stage's ONNX component: ``out(x)`` per call, with the same call statistics."""

    def __init__(self, out: Callable[[np.ndarray], np.ndarray]) -> None:
        self.out = out
        self.stats = CallStats()
        self.sizes: list[int] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        self.stats.calls += 1
        self.stats.rows += len(x)
        return self.out(x)


class FakeTextEngine:
    """The denoiser: records each guided pair's (prompt id, negative id) from the hidden states
    it is given, and predicts a constant (not zero)."""

    def __init__(self) -> None:
        self.manifest = ModelStore().get("mnist-cfg-unet").manifest
        self.stats = CallStats()
        self.pairs: set[tuple[int, int]] = set()
        self.shapes: list[tuple[int, ...]] = []

    def run(self, sample: np.ndarray, timestep: np.ndarray, condition: np.ndarray) -> np.ndarray:
        if condition.ndim == 3:  # hidden states (a class model's labels are [B])
            assert condition.shape == (len(sample), SEQ, DIM)
            ids = condition[:, 0, 0].astype(int)
            self.pairs |= set(zip(ids[0::2].tolist(), ids[1::2].tolist(), strict=True))
        self.shapes.append(sample.shape[1:])
        self.stats.calls += 1
        self.stats.rows += len(sample)
        return np.full_like(sample, 0.1)


def test_text_jobs_run_through_the_workers_encoder_and_decoder() -> None:
    tokenizer = FakeTokenizer()
    text = FakeComponent(lambda ids: np.repeat(ids[:, :, None], DIM, axis=2).astype(np.float32))
    encoder = TextEncoder(tokenizer, text)  # type: ignore[arg-type]
    vae = FakeComponent(lambda z: np.tanh(np.repeat(z[:, :1], 3, axis=1)))  # [n, 3, h, w] in [-1, 1]
    decoder = Decoder(LatentSpec(channels=1, factor=1, scaling_factor=0.5), vae)  # type: ignore[arg-type]
    engine = FakeTextEngine()
    jobs = text_mix(10, seed=3, sizes=(None, (20, 16)), samplers=("ddim", "euler"))
    run = run_jobs(engine, jobs, max_rows=6, encoder=encoder, decoder=decoder)  # type: ignore[arg-type]

    assert run.images == sum(j.num_images for j in jobs) == sum(vae.sizes)
    assert run.evaluations == sum(j.evaluations for j in jobs) == engine.stats.rows
    # Every guided pair pairs the job's prompt with its negative prompt (the empty one if none).
    assert engine.pairs == {
        (tokenizer.ids[j.prompt or ""], tokenizer.ids[j.negative_prompt or ""]) for j in jobs
    }
    # Each distinct text is encoded once: the worker's cache, one call per joining step.
    texts = {t for j in jobs for t in (j.prompt or "", j.negative_prompt or "")}
    assert sum(text.sizes) == len(texts) == len(tokenizer.ids)
    assert len(text.sizes) < len(jobs)
    # Both sizes ran, and never in one call (a call has one shape).
    assert {(1, 28, 28), (1, 16, 20)} <= set(engine.shapes)
    # The stages' counts are the components' own.
    assert run.stages[TEXT].calls == len(text.sizes) and run.stages[TEXT].rows == len(texts)
    assert run.stages[DECODE].calls == len(vae.sizes) and run.stages[DECODE].rows == run.images
    assert run.stages[DENOISER].calls == engine.stats.calls == run.calls
    assert run.stages[PNG].seconds > 0


def test_class_jobs_have_no_text_or_vae_calls() -> None:
    engine = FakeTextEngine()
    jobs = job_mix(5, seed=1)
    run = run_jobs(engine, jobs, max_rows=4)  # type: ignore[arg-type]
    assert run.images == 5
    assert run.stages[TEXT].calls == 0 and run.stages[DECODE].calls == 0
    assert run.stages[DENOISER].calls == engine.stats.calls == run.calls and not engine.pairs
    assert run.stages[PNG].seconds > 0


def test_stage_shares_account_for_the_whole_run() -> None:
    stages = {TEXT: StageTime(0.5, 2, 6, 0.4), DENOISER: StageTime(2.0, 10, 80, 2.0), PNG: StageTime(0.25)}
    shares = stage_shares(Run(4.0, 3, 80, 10, stages))
    assert [s.name for s in shares] == [*STAGES, REST]
    by = {s.name: s for s in shares}
    assert by[TEXT].share == 0.125 and by[TEXT].calls == 2 and by[TEXT].onnx_seconds == 0.4
    assert by[DENOISER].share == 0.5 and by[DECODE].seconds == 0.0
    assert by[REST].seconds == pytest.approx(1.25) and sum(s.share for s in shares) == pytest.approx(1.0)
    # Rounding can make the stages sum past the wall time: the rest is then zero, not negative.
    over = stage_shares(Run(1.0, 1, 1, 1, {DENOISER: StageTime(1.01)}))
    assert over[-1].seconds == 0.0
    assert stage_shares(Run(0.0, 0, 0, 0))[-1].share == 0.0


def test_curves_use_the_stages_own_clock() -> None:
    stats = CallStats()
    calls: list[int] = []

    def call(size: int) -> None:  # the stage's clock says 1 ms + 0.25 ms a row; the wall says ~0
        calls.append(size)
        stats.calls += 1
        stats.rows += size
        stats.seconds += 0.001 + 0.00025 * size

    rates = curve_rates(call, stats, [1, 4, 16], seconds_per_size=0.0, rounds=2)
    assert rates == {s: pytest.approx(s / (0.001 + 0.00025 * s)) for s in (1, 4, 16)}
    assert calls == [1, 1, 1, 4, 4, 4, 16, 16, 16] * 2  # per round: a warm-up, then two timed
    curve = stage_curve("vae", "a latent", call, stats, [1, 4, 16], 0.0, 1)
    assert curve.knee == 16 and curve.ms_per_call[4] == pytest.approx(2.0)


def test_report_has_a_table_per_stage_curve_and_the_shares(tmp_path: Path) -> None:
    from bench.report import Results, write_report
    from bench.stages import PipelineStages

    stats = CallStats()

    def call(size: int) -> None:
        stats.rows += size
        stats.seconds += 0.001 * (1 + size)

    curves = [stage_curve(name, "a row", call, stats, [1, 2, 4], 0.0, 1) for name in ("a", "b", "c")]
    shares = stage_shares(Run(2.0, 3, 60, 9, {DENOISER: StageTime(1.5, 9, 60, 1.5)}))
    stages = PipelineStages(
        "tiny-sd:1", 2, ["CPUExecutionProvider"], 12.0, curves, 8, 2, 3, 60, 1, 2.0, shares
    )
    out = tmp_path / "BENCH.md"
    write_report(Results("python -m bench", True, {}, stages=stages), out, tmp_path / "plots")
    text = out.read_text()
    assert text.count("| rows per call | rows/s | ms per call |") == 3
    assert "| denoiser calls | 1.500 | 75% | 9 | 6.7 | 1.500 s |" in text
    assert "| 6. tiny SD: worker time in denoiser calls | 75%" in text
    assert (tmp_path / "plots" / "stage_curves.png").stat().st_size > 0
    missing = Results("python -m bench", True, {}, stages_missing="needs torch")
    write_report(missing, out, tmp_path / "plots")
    assert "Not measured: needs torch." in out.read_text()
