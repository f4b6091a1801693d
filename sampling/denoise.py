"""Per-image sampling state and one batched denoising step over images of mixed requests.

Every image is a row with its own plan (sampler and step count), position, latent, previous
x0 prediction and seeded generator; nothing is shared between rows but read-only plans. A
step builds one model batch for all rows (doubling only the rows that use classifier-free
guidance), and applies each row's own update to the model's output. An image therefore
depends only on its own parameters, never on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sampling.plan import StepCoefficients, StepPlan, apply_update
from sampling.schedule import PredictionType

ModelFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Condition:
    """What one image is conditioned on, for each side of classifier-free guidance.

    ``cond`` and ``uncond`` are the denoiser's condition input for one row: a class label
    (int64 scalar) or a text encoder's hidden states ([seq, dim] float32). ``conditional`` is
    False for an image with no condition (a null class): it runs the unconditional model only.
    """

    cond: np.ndarray
    uncond: np.ndarray
    conditional: bool

    @classmethod
    def for_class(cls, class_label: int | None, null_class: int) -> Condition:
        label = null_class if class_label is None else class_label
        return cls(np.asarray(label, np.int64), np.asarray(null_class, np.int64), class_label is not None)

    @classmethod
    def for_text(cls, embedding: np.ndarray, negative: np.ndarray) -> Condition:
        """A prompt's hidden states, and the negative (or empty) prompt's for the other side."""
        return cls(embedding, negative, True)


class RowState(NamedTuple):
    """One image in flight. ``rng`` is this image's own generator, seeded from its seed.

    Immutable: a step makes each row anew (a named tuple, which builds several times faster
    than a frozen dataclass: a thousand rows per step add up).
    """

    plan: StepPlan
    condition: Condition
    guidance_scale: float
    step: int
    x: np.ndarray
    x0_prev: np.ndarray
    rng: np.random.Generator

    @property
    def done(self) -> bool:
        return self.step >= self.plan.num_steps

    @property
    def guided(self) -> bool:
        return is_guided(self.condition.conditional, self.guidance_scale)

    @property
    def shape(self) -> tuple[int, ...]:
        """The sample's shape: rows of different shapes never share a denoiser call."""
        return tuple(self.x.shape)


def is_guided(conditional: bool, guidance_scale: float) -> bool:
    """Whether an image needs both a conditional and an unconditional prediction per step.

    Guidance 1 is the plain conditional model and 0 the plain unconditional one; an image with
    no condition (a null class) is unconditional whatever the scale. Only the rest cost two
    denoiser rows.
    """
    return conditional and guidance_scale not in (0.0, 1.0)


def start_row(
    plan: StepPlan,
    seed: int,
    condition: Condition,
    guidance_scale: float,
    sample_shape: tuple[int, ...],
) -> RowState:
    """A fresh row: its initial noise is the first draw of its own generator (the seed
    contract: ``standard_normal(sample_shape)`` of ``PCG64(seed)``, times the plan's scale)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    x = (rng.standard_normal(sample_shape) * plan.init_scale).astype(np.float32)
    return RowState(plan, condition, float(guidance_scale), 0, x, np.zeros(sample_shape), rng)


@dataclass(frozen=True)
class ModelBatch:
    """The denoiser's inputs for one step, and where each row's predictions land."""

    x: np.ndarray  # float32 [B, C, H, W]: each row's own sample, once
    sample: np.ndarray  # float32 [N, C, H, W]
    timestep: np.ndarray  # float32 [N]
    condition: np.ndarray  # [N]: int64 labels, or [N, seq, dim] float32 hidden states
    cond_index: np.ndarray  # [B]: the row's conditional (or only) prediction
    uncond_index: np.ndarray  # [B]: the row's unconditional prediction, -1 when unguided

    @property
    def size(self) -> int:
        return len(self.timestep)


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack`` of same-shape arrays, in one call to ``np.array``: several times faster
    for many small arrays (and numpy raises ValueError for arrays of different shapes, as
    np.stack does)."""
    return np.array(arrays)


def build_model_batch(rows: Sequence[RowState]) -> ModelBatch:
    """Stack the rows' model inputs: guided rows twice (conditional, then unconditional)."""
    n = len(rows)
    guided = np.fromiter((row.guided for row in rows), dtype=bool, count=n)
    per_row = 1 + guided.astype(np.intp)
    cond = np.cumsum(per_row) - per_row
    uncond = np.where(guided, cond + 1, -1)
    conditions: list[np.ndarray] = []
    for row, two in zip(rows, guided.tolist(), strict=True):
        c = row.condition
        # Guidance 0 is the unconditional model: its only row carries the unconditional input.
        conditions.append(c.cond if c.conditional and row.guidance_scale != 0.0 else c.uncond)
        if two:
            conditions.append(c.uncond)
    x = _stack([row.x for row in rows]).astype(np.float32, copy=False)
    # Each row's timestep, rounded to float32 once per row: the same values the model gets.
    t = np.array([row.plan.timesteps[row.step] for row in rows], dtype=np.float64).astype(np.float32)
    source = np.repeat(np.arange(n), per_row) if guided.any() else None
    return ModelBatch(
        x=x,
        sample=x if source is None else x[source],
        timestep=t if source is None else t[source],
        condition=_stack(conditions),
        cond_index=cond,
        uncond_index=uncond,
    )


def combine_guidance(rows: Sequence[RowState], batch: ModelBatch, output: np.ndarray) -> np.ndarray:
    """Classifier-free guidance: uncond + w * (cond - uncond) for guided rows, else cond."""
    cond = output[batch.cond_index].astype(np.float64)
    guided = batch.uncond_index >= 0
    if guided.any():
        w = np.array([r.guidance_scale for r in rows], dtype=np.float64)[guided]
        w = w.reshape((-1,) + (1,) * (output.ndim - 1))
        unc = output[batch.uncond_index[guided]].astype(np.float64)
        cond[guided] = unc + w * (cond[guided] - unc)
    return cond


def advance(
    rows: Sequence[RowState],
    model_output: np.ndarray,
    prediction_type: PredictionType,
    x: np.ndarray | None = None,
) -> list[RowState]:
    """Apply each row's own update to its (guided) model output; returns the rows one step on.
    ``x`` is the rows' samples stacked, where the caller has them already."""
    coefs = StepCoefficients.gather([r.plan for r in rows], [r.step for r in rows])
    # Each row draws noise from its own generator, and only on steps that use it.
    noise = None
    if coefs.c_noise.any():
        draws = (coefs.c_noise != 0.0).tolist()
        shape = rows[0].x.shape
        noise = _stack(
            [r.rng.standard_normal(shape) if d else np.zeros(shape) for r, d in zip(rows, draws, strict=True)]
        )
    x0_prev = _stack([r.x0_prev for r in rows]) if coefs.c_x0_prev.any() else None
    x_next, x0 = apply_update(
        _stack([r.x for r in rows]) if x is None else x, model_output, x0_prev, noise, coefs, prediction_type
    )
    return [
        RowState(r.plan, r.condition, r.guidance_scale, r.step + 1, x_next[i], x0[i], r.rng)
        for i, r in enumerate(rows)
    ]


def denoise_step(rows: Sequence[RowState], model: ModelFn, prediction_type: PredictionType) -> list[RowState]:
    """One model call for all rows (of one sample shape), then each row's update."""
    batch = build_model_batch(rows)
    output = model(batch.sample, batch.timestep, batch.condition)
    return advance(rows, combine_guidance(rows, batch, output), prediction_type, batch.x)


def denoise_grouped(
    rows: Sequence[RowState], model: ModelFn, prediction_type: PredictionType
) -> list[RowState]:
    """One step for rows of possibly different sample shapes: one model call per shape (in
    order of first appearance), results back in the rows' order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.shape, []).append(i)
    out: list[RowState | None] = [None] * len(rows)
    for idx in groups.values():
        for i, r in zip(idx, denoise_step([rows[i] for i in idx], model, prediction_type), strict=True):
            out[i] = r
    return [r for r in out if r is not None]


def sample_to_completion(
    rows: Sequence[RowState], model: ModelFn, prediction_type: PredictionType
) -> list[np.ndarray]:
    """Run rows until each is done (rows leave as they finish); returns final latents in order."""
    ids = list(range(len(rows)))
    active = list(rows)
    finished: dict[int, np.ndarray] = {}
    while active:
        stepped = denoise_grouped(active, model, prediction_type)
        keep = [k for k, r in enumerate(stepped) if not r.done]
        for k, r in enumerate(stepped):
            if r.done:
                finished[ids[k]] = r.x
        ids = [ids[k] for k in keep]
        active = [stepped[k] for k in keep]
    return [finished[i] for i in range(len(rows))]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Latent in [-1, 1] to 8-bit pixels, [C, H, W] -> [H, W] for one channel."""
    img = np.clip((x.astype(np.float64) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
