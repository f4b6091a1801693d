"""Execution-provider selection (pure; no GPU needed)."""

from __future__ import annotations

import logging

import pytest

from workers.engine import CPU, CUDA, EngineError, choose_providers, use_cuda_graph, use_io_binding


def test_cuda_first_when_available() -> None:
    assert choose_providers([CUDA, CPU]) == [CUDA, CPU]


def test_cpu_only_build() -> None:
    assert choose_providers([CPU]) == [CPU]


def test_requested_cpu_keeps_gpu_out() -> None:
    assert choose_providers([CUDA, CPU], [CPU]) == [CPU]


def test_requested_provider_missing_is_an_error() -> None:
    with pytest.raises(EngineError, match="CUDAExecutionProvider"):
        choose_providers([CPU], [CUDA])


def test_cpu_is_always_the_fallback() -> None:
    assert choose_providers(["TensorrtExecutionProvider", CUDA, CPU], ["TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider",
        CPU,
    ]


def test_io_binding_defaults_to_on_with_cuda_only() -> None:
    assert use_io_binding(None, [CUDA, CPU]) is True
    assert use_io_binding(None, [CPU]) is False
    assert use_io_binding(True, [CPU]) is True
    assert use_io_binding(False, [CUDA, CPU]) is False


def test_cuda_graph_needs_cuda_first() -> None:
    assert use_cuda_graph(True, [CUDA, CPU]) is True
    assert use_cuda_graph(False, [CUDA, CPU]) is False
    assert use_cuda_graph(False, [CPU]) is False


@pytest.mark.parametrize("providers", [[CPU], ["TensorrtExecutionProvider", CUDA, CPU], []])
def test_cuda_graph_without_cuda_falls_back_with_a_warning(
    providers: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="diffq.engine"):
        assert use_cuda_graph(True, providers) is False
    assert [r.getMessage() for r in caplog.records] == [
        "cuda_graph requested but the session does not run on CUDA; running without graphs"
    ]
