"""onnxruntime against torch: every exported component, on random inputs, within a tolerance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from tooling.importer.errors import ImportRefused

Case = tuple[str, dict[str, np.ndarray]]  # (what it checks, feeds by input name)


@dataclass(frozen=True)
class Check:
    """The worst disagreement over a component's cases (relative: to the largest |torch| value)."""

    max_abs_error: float | None  # None: run without a torch reference (see ``smoke``)
    max_relative_error: float | None
    cases: list[str]

    def as_dict(self) -> dict[str, object]:
        if self.max_abs_error is None or self.max_relative_error is None:
            return {"compared_with_torch": False, "cases": self.cases}
        return {
            "max_abs_error": float(f"{self.max_abs_error:.3g}"),
            "max_relative_error": float(f"{self.max_relative_error:.3g}"),
            "cases": self.cases,
        }


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    sess: ort.InferenceSession, feeds: dict[str, np.ndarray], component: str, label: str
) -> np.ndarray:
    """The first output, or ImportRefused naming the component and the case that failed."""
    try:
        return np.asarray(sess.run(None, feeds)[0])
    except Exception as e:  # onnxruntime raises its own types; say which case broke
        raise ImportRefused(component, f"onnxruntime cannot run {label}: {e}") from e


def compare(
    path: Path,
    reference: Callable[..., torch.Tensor],
    cases: Sequence[Case],
    component: str,
    tolerance: float,
) -> Check:
    """Run every case through the ONNX file and ``reference``; refuse if they disagree."""
    sess = session(path)
    worst_abs = worst_rel = 0.0
    for label, feeds in cases:
        got = run_onnx(sess, feeds, component, label)
        with torch.no_grad():
            want = reference(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        if got.shape != want.shape:
            raise ImportRefused(component, f"{label}: onnxruntime gives {got.shape}, torch {want.shape}")
        err = float(np.abs(got.astype(np.float64) - want).max())
        scale = float(np.abs(want).max())
        if not np.isfinite(got).all() or scale == 0.0:
            raise ImportRefused(component, f"{label}: output is not finite or all zero; cannot check it")
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, err / scale)
    if worst_rel > tolerance:
        raise ImportRefused(
            component,
            f"onnxruntime disagrees with torch: max relative error {worst_rel:.2e} > {tolerance:.0e}",
        )
    return Check(worst_abs, worst_rel, [label for label, _ in cases])


def smoke(path: Path, cases: Sequence[Case], component: str) -> Check:
    """Run the cases through an ONNX file with no torch reference (an Optimum export): every
    batch size must run and give finite values; there is no error to measure."""
    sess = session(path)
    for label, feeds in cases:
        out = run_onnx(sess, feeds, component, label)
        if not np.isfinite(out).all():
            raise ImportRefused(component, f"{label}: output is not finite")
    return Check(None, None, [label for label, _ in cases])
