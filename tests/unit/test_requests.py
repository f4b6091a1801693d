"""Resolving requests against manifests (pure: no Redis, no HTTP): the condition fits the
model's kind, the size is served and always filled in, and queued work counts denoiser rows."""

from __future__ import annotations

import pytest

from diffq.errors import ValidationFailed
from diffq.jobs import JobRequest
from model_store.manifest import Manifest
from model_store.store import ModelStore
from service.requests import resolve
from service.schemas import JobCreate
from service.views import model_view
from tests.stores import MNIST, TEXT_MODEL, TEXT_NATIVE, TEXT_SIZES, text_model_store


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Manifest]:
    store = ModelStore(text_model_store(tmp_path_factory.mktemp("store")))
    return {m.manifest.name: m.manifest for m in store.models()}


def run(models: dict[str, Manifest], **body: object) -> JobRequest:
    return resolve(JobCreate.model_validate(body), models, MNIST)


def refused_field(models: dict[str, Manifest], **body: object) -> set[str]:
    with pytest.raises(ValidationFailed) as e:
        run(models, **body)
    return {d["field"] for d in e.value.details}


def test_text_request_fills_the_native_size_and_counts_guided_rows(models: dict[str, Manifest]) -> None:
    req = run(models, model=TEXT_MODEL, prompt="a cat", num_images=3, steps=10, guidance_scale=5)
    assert (req.width, req.height) == TEXT_NATIVE
    assert req.prompt == "a cat" and req.negative_prompt is None and req.class_label is None
    # A prompt is a condition: guided, two denoiser rows per image per step.
    assert req.rows_per_step == 6 and req.evaluations == 60
    unguided = run(models, model=TEXT_MODEL, prompt="a cat", num_images=3, steps=10, guidance_scale=1)
    assert unguided.evaluations == 30


def test_every_served_size_is_accepted(models: dict[str, Manifest]) -> None:
    for width, height in TEXT_SIZES:
        req = run(models, model=TEXT_MODEL, prompt="", width=width, height=height)
        assert (req.width, req.height) == (width, height)


def test_refusals_name_the_field(models: dict[str, Manifest]) -> None:
    assert refused_field(models, model=TEXT_MODEL, prompt="x", class_label=0) == {"class_label"}
    assert refused_field(models, model=TEXT_MODEL) == {"prompt"}
    assert refused_field(models, class_label=1, prompt="x") == {"prompt"}
    assert refused_field(models, negative_prompt="x") == {"negative_prompt"}
    assert refused_field(models, model=TEXT_MODEL, prompt="x", width=64) == {"height"}
    assert refused_field(models, model=TEXT_MODEL, prompt="x", height=64) == {"width"}
    assert refused_field(models, model=TEXT_MODEL, prompt="x", width=64, height=128) == {"width", "height"}
    assert refused_field(models, class_label=10) == {"class_label"}


def test_class_requests_resolve_as_before_plus_their_size(models: dict[str, Manifest]) -> None:
    req = run(models, class_label=4, num_images=2, steps=8, guidance_scale=2, seed=9)
    assert (req.model, req.class_label, req.seed) == (MNIST, 4, 9)
    assert (req.width, req.height) == (28, 28) and req.prompt is None
    assert req.evaluations == 2 * 2 * 8
    assert run(models, class_label=None, num_images=2, steps=8, guidance_scale=2).evaluations == 2 * 8


def test_model_views(models: dict[str, Manifest]) -> None:
    text, mnist = model_view(models[TEXT_MODEL]), model_view(models[MNIST])
    assert (text.kind, mnist.kind) == ("text-to-image", "class-conditional")
    assert [(s.width, s.height) for s in text.sizes] == TEXT_SIZES
    assert text.classes == [] and len(mnist.classes) == 10


def test_the_bundled_store_still_resolves() -> None:
    # The real MNIST manifest (not the test copy): 28x28 is its only size.
    models = {m.manifest.name: m.manifest for m in ModelStore().models()}
    assert models[MNIST].served_sizes == [(28, 28)]
    assert run(models, class_label=1).width == 28
