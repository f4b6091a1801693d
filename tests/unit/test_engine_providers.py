"""Execution-provider selection (pure; no GPU needed)."""

from __future__ import annotations

import logging

import pytest

from workers.engine import (
    CPU,
    CUDA,
    EngineError,
    choose_providers,
    choose_variant,
    cuda_options,
    use_cuda_graph,
    use_io_binding,
    use_padding,
)


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


def test_variant_auto_is_fp16_on_cuda_only_when_the_model_has_one() -> None:
    assert choose_variant("auto", "cuda", ["fp32", "fp16"]) == "fp16"
    assert choose_variant("auto", "cpu", ["fp32", "fp16"]) == "fp32"
    assert choose_variant("auto", "cuda", ["fp32"]) == "fp32"


def test_variant_asked_for_by_name_must_exist() -> None:
    assert choose_variant("fp16", "cpu", ["fp32", "fp16"]) == "fp16"
    assert choose_variant("fp32", "cuda", ["fp32", "fp16"]) == "fp32"
    with pytest.raises(EngineError, match="'int8' not available"):
        choose_variant("int8", "cuda", ["fp32", "fp16"])


def test_padding_defaults_to_on_with_cuda_only() -> None:
    assert use_padding(None, [CUDA, CPU]) is True
    assert use_padding(None, [CPU]) is False
    assert use_padding(True, [CPU]) is True
    assert use_padding(False, [CUDA, CPU]) is False


def test_cuda_options_carry_the_search_and_the_graph_flag() -> None:
    assert cuda_options("HEURISTIC", capture=False) == {"cudnn_conv_algo_search": "HEURISTIC"}
    assert cuda_options("EXHAUSTIVE", capture=True) == {
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "enable_cuda_graph": "1",
    }
