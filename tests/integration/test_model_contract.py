"""The shipped ONNX model: its I/O contract, and per-row independence through onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from model_store.store import ModelStore
from sampling.denoise import Condition, sample_to_completion, start_row
from sampling.registry import get_plan
from workers.engine import Engine, EngineError

STORED = ModelStore().get("mnist-cfg-unet")
M = STORED.manifest


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(STORED.verify(), M)


def test_graph_matches_the_manifest() -> None:
    graph = onnx.load(str(STORED.path)).graph
    assert not [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    elem = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}
    for spec, value in zip(M.inputs, graph.input, strict=True):
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        assert (value.name, elem[t.elem_type], dims) == (spec.name, spec.dtype, spec.shape)
    assert graph.output[0].name == M.outputs[0].name
    assert (
        max(o.version for o in onnx.load(str(STORED.path)).opset_import if o.domain in ("", "ai.onnx")) >= 17
    )


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_dynamic_batch_and_fractional_timesteps(engine: Engine, batch: int) -> None:
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, *M.image_shape)).astype(np.float32)
    t = (rng.random(batch) * 999).astype(np.float32)
    y = rng.integers(0, M.null_class + 1, batch)
    out = engine.run(x, t, y)
    assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()
    # A fractional timestep lies between its integer neighbours (the embedding is continuous).
    lo, mid, hi = (engine.run(x[:1], np.array([v], np.float32), y[:1]) for v in (500.0, 500.5, 501.0))
    assert 0 < np.abs(mid - lo).max() < np.abs(hi - lo).max() * 2


def test_class_label_changes_the_prediction(engine: Engine) -> None:
    x = np.random.default_rng(0).standard_normal((2, *M.image_shape)).astype(np.float32)
    t = np.array([600.0, 600.0], np.float32)
    out = engine.run(x[[0, 0]], t, np.array([1, 7]))
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_engine_refuses_a_manifest_that_does_not_match() -> None:
    wrong = M.model_copy(update={"inputs": [M.inputs[1], M.inputs[0], M.inputs[2]]})
    with pytest.raises(EngineError, match="does not match"):
        Engine(STORED.path, wrong)


REQUESTS = [
    ("dpmpp_2m", 8, 11, 3, 3.0),
    ("ddim", 6, 12, 7, 1.0),
    ("euler_ancestral", 10, 13, None, 2.0),
    ("ddpm", 12, 14, 0, 5.0),
    ("dpmpp_2m", 4, 15, 9, 0.0),
]


def test_each_image_is_identical_alone_and_in_a_mixed_batch(engine: Engine) -> None:
    config = M.schedule.to_config()

    def rows(reqs: list[tuple]) -> list:
        return [
            start_row(
                get_plan(config, s, n), seed, Condition.for_class(c, M.unconditional_class), w, M.image_shape
            )
            for s, n, seed, c, w in reqs
        ]

    together = sample_to_completion(rows(REQUESTS), engine.run, M.schedule.prediction_type)
    for req, got in zip(REQUESTS, together, strict=True):
        alone = sample_to_completion(rows([req]), engine.run, M.schedule.prediction_type)[0]
        assert alone.tobytes() == got.tobytes(), req
