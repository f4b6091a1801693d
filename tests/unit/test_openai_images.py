"""The Images API's request translation and its errors in OpenAI's shape, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from diffq.errors import IdempotencyConflict, RateLimited, Unauthorized, Unavailable, ValidationFailed
from model_store.manifest import Manifest
from model_store.store import ModelStore
from service.openai_errors import OpenAIError, from_service_error, from_validation
from service.openai_images import OPENAI_ONLY, to_job
from service.schemas import MAX_NUM_IMAGES, MAX_PROMPT_CHARS, MAX_USER_CHARS, ImageGenerationCreate
from service.waiters import TooManyWaiters
from tests.stores import MNIST, TEXT_MODEL, TEXT_NATIVE, TEXT_SIZES, text_model_store


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Manifest]:
    store = ModelStore(text_model_store(tmp_path_factory.mktemp("store")))
    return {name: store.get(name).manifest for name in (MNIST, TEXT_MODEL)}


def body(**fields: Any) -> ImageGenerationCreate:
    return ImageGenerationCreate.model_validate({"prompt": "a red circle", "model": TEXT_MODEL, **fields})


def refused(models: dict[str, Manifest], **fields: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        to_job(body(**fields), models, MNIST)
    return caught.value


def test_a_request_becomes_the_same_job_body_with_our_fields(models: dict[str, Manifest]) -> None:
    job = to_job(
        body(n=3, size="96x64", seed=5, steps=7, sampler="ddim", guidance_scale=2.5, negative_prompt="dark"),
        models,
        MNIST,
    )
    assert (job.model, job.prompt, job.negative_prompt) == (TEXT_MODEL, "a red circle", "dark")
    assert (job.width, job.height, job.num_images) == (96, 64, 3)
    assert (job.seed, job.steps, job.sampler, job.guidance_scale) == (5, 7, "ddim", 2.5)
    assert job.class_label is None and job.priority == "normal"


@pytest.mark.parametrize("size", [None, "auto"])
def test_no_size_or_auto_is_the_native_size(models: dict[str, Manifest], size: str | None) -> None:
    job = to_job(body(size=size), models, MNIST)
    assert (job.width, job.height, job.num_images) == (*TEXT_NATIVE, 1)


@pytest.mark.parametrize(
    "size", ["64x", "x64", "0x0", "99999x99999", "64×64", "64X64", " 64x64", "064x064", "-64x64", "६४x६४", ""]
)
def test_malformed_or_unserved_sizes_are_a_400_naming_size(models: dict[str, Manifest], size: str) -> None:
    error = refused(models, size=size)
    assert (error.status, error.param, error.code, error.type) == (
        400,
        "size",
        "invalid_value",
        "invalid_request_error",
    )


def test_an_unserved_size_lists_the_served_ones(models: dict[str, Manifest]) -> None:
    error = refused(models, size="1024x1024")
    assert all(f"{w}x{h}" in error.message for w, h in TEXT_SIZES), error.message


def test_an_unknown_model_is_a_404_model_not_found(models: dict[str, Manifest]) -> None:
    error = refused(models, model="dall-e-3")
    assert (error.status, error.param, error.code) == (404, "model", "model_not_found")


def test_a_class_model_is_a_clear_400(models: dict[str, Manifest]) -> None:
    error = refused(models, model=MNIST)
    assert (error.status, error.param, error.code) == (400, "model", "model_not_supported")
    assert "class_label" in error.message and "/v1/jobs" in error.message
    # The server's default model is used when none is named: here the class model, refused too.
    with pytest.raises(OpenAIError):
        to_job(ImageGenerationCreate(prompt="x"), models, MNIST)


def test_openai_parameters_at_a_harmless_value_are_accepted(models: dict[str, Manifest]) -> None:
    for name, (accepted, _) in OPENAI_ONLY.items():
        for value in (None, *accepted):
            to_job(body(**{name: value}), models, MNIST)


@pytest.mark.parametrize(
    "field, value",
    [
        ("quality", "hd"),
        ("quality", "high"),
        ("style", "vivid"),
        ("background", "transparent"),
        ("moderation", "auto"),
        ("moderation", "low"),
        ("output_format", "jpeg"),
        ("output_compression", 50),
        ("stream", True),
        ("partial_images", 2),
    ],
)
def test_other_values_of_openai_parameters_are_a_400(
    models: dict[str, Manifest], field: str, value: object
) -> None:
    error = refused(models, **{field: value})
    assert (error.status, error.param, error.code) == (400, field, "unsupported_value")
    assert "not supported" in error.message


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 0},
        {"n": MAX_NUM_IMAGES + 1},
        {"n": "2"},
        {"prompt": "x" * (MAX_PROMPT_CHARS + 1)},
        {"prompt": "a\x00b"},
        {"prompt": None},
        {"user": "u" * (MAX_USER_CHARS + 1)},
        {"user": "\x1b[31m"},
        {"safety_identifier": "s" * (MAX_USER_CHARS + 1)},
        {"size": "1" * 33},
        {"response_format": "png"},
        {"seed": -1},
        {"steps": 0},
        {"guidance_scale": 101},
        {"negative_prompt": "n" * (MAX_PROMPT_CHARS + 1)},
        {"class_label": 3},  # ours, but not an Images API parameter
        {"num_images": 2},
        {"width": 64},
        {"priority": "high"},
        {"images": []},
    ],
)
def test_bounds_and_unknown_fields_are_refused_by_the_schema(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ImageGenerationCreate.model_validate({"prompt": "x", **fields})


def test_prompt_is_required() -> None:
    with pytest.raises(ValidationError):
        ImageGenerationCreate.model_validate({"model": TEXT_MODEL})


def test_bounds_at_their_limits_are_accepted() -> None:
    ImageGenerationCreate.model_validate(
        {"prompt": "p" * MAX_PROMPT_CHARS, "user": "u" * MAX_USER_CHARS, "n": MAX_NUM_IMAGES, "size": "64x64"}
    )


def _validation(payload: dict[str, Any]) -> RequestValidationError:
    try:
        ImageGenerationCreate.model_validate(payload)
    except ValidationError as e:
        return RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])
    raise AssertionError("valid")


def test_schema_errors_are_400s_naming_the_param() -> None:
    unknown = from_validation(_validation({"prompt": "x", "foo": 1}))
    assert (unknown.status, unknown.param, unknown.code) == (400, "foo", "unknown_parameter")
    missing = from_validation(_validation({}))
    assert (missing.status, missing.param, missing.code) == (400, "prompt", "missing_required_parameter")
    bound = from_validation(_validation({"prompt": "x", "n": 99}))
    assert (bound.status, bound.param, bound.code) == (400, "n", "invalid_value")
    not_json = from_validation(
        RequestValidationError([{"loc": ("body", 0), "msg": "JSON decode error", "type": "json_invalid"}])
    )
    assert not_json.status == 400


def test_service_errors_keep_status_and_retry_after_in_openai_shape() -> None:
    limited = from_service_error(RateLimited("slow down", retry_after=2.4))
    assert (limited.status, limited.type, limited.code) == (429, "requests", "rate_limited")
    assert limited.headers["Retry-After"] == "2"
    waiters = from_service_error(TooManyWaiters("too many"))
    assert (waiters.status, waiters.code) == (429, "too_many_waiters")
    auth = from_service_error(Unauthorized("no key"))
    assert (auth.status, auth.code, auth.headers["WWW-Authenticate"]) == (401, "invalid_api_key", "Bearer")
    invalid = from_service_error(
        ValidationFailed("steps: too many", details=[{"field": "num_images", "message": "too much work"}])
    )
    assert (invalid.status, invalid.param, invalid.code) == (400, "n", "invalid_value")


def test_a_503_that_may_have_queued_the_job_names_it_and_asks_for_no_retry() -> None:
    job_id = "ab" * 16
    error = from_service_error(Unavailable("store away", {"job_id": job_id}, retry_after=1))
    assert (error.status, error.type, error.job_id) == (503, "server_error", job_id)
    assert error.headers["x-should-retry"] == "false"
    payload = json.loads(bytes(error.response().body))["error"]
    assert payload == {
        "message": "store away",
        "type": "server_error",
        "param": None,
        "code": "unavailable",
        "job_id": job_id,
    }
    assert "x-should-retry" not in from_service_error(Unavailable("full", {"reason": "full"})).headers
    conflict = from_service_error(IdempotencyConflict("another body"))
    assert (conflict.status, conflict.code, conflict.headers["x-should-retry"]) == (
        409,
        "idempotency_conflict",
        "false",
    )
