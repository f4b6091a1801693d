"""Execution-provider selection (pure; no GPU needed)."""

from __future__ import annotations

import pytest

from workers.engine import CPU, CUDA, EngineError, choose_providers


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
