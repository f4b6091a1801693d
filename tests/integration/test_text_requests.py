"""The gateway serving a text-to-image model beside the MNIST class model (real Valkey, no
worker: jobs stay queued). The text model's files are dummies: the gateway reads manifests only."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from service.schemas import MAX_PROMPT_CHARS
from tests.conftest import Stack, stack_env
from tests.stores import MNIST, TEXT_MAX_TOKENS, TEXT_MODEL, TEXT_NATIVE, TEXT_SIZES, text_model_store


@pytest.fixture(scope="module")
def gateway(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One gateway for the module over a store with MNIST and the dummy text model."""
    store = text_model_store(tmp_path_factory.mktemp("store"))
    env = stack_env(valkey, f"t{uuid.uuid4().hex[:10]}", DIFFQ_MODEL_STORE=str(store))
    stack = Stack(env=env, logs=tmp_path_factory.mktemp("gw"))
    stack.start_gateway()
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            yield client
    finally:
        stack.stop_all()


def text_job(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/jobs", json={"model": TEXT_MODEL, **body})


def assert_422_naming(r: httpx.Response, field: str) -> dict:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "validation_error"
    assert field in err["message"]
    assert any(d["field"] == field for d in err["details"]), err
    return err


def test_prompt_is_accepted_and_shown_with_the_native_size(gateway: httpx.Client) -> None:
    r = text_job(gateway, prompt="a photo of a cat", negative_prompt="blurry", seed=7)
    assert r.status_code == 202, r.text
    job = gateway.get(r.headers["location"]).json()
    req = job["request"]
    assert req["model"] == TEXT_MODEL and req["class_label"] is None
    assert (req["prompt"], req["negative_prompt"]) == ("a photo of a cat", "blurry")
    assert (req["width"], req["height"]) == TEXT_NATIVE
    models = {m["name"]: m for m in gateway.get("/v1/models").json()["models"]}
    assert req["steps"] == models[TEXT_MODEL]["default_steps"]
    assert req["guidance_scale"] == models[TEXT_MODEL]["default_guidance_scale"]
    assert job["status"] == "queued" and job["queue_position"] >= 1


def test_an_empty_prompt_is_legal_and_negative_prompt_optional(gateway: httpx.Client) -> None:
    r = text_job(gateway, prompt="")
    assert r.status_code == 202, r.text
    assert r.json()["request"]["prompt"] == ""
    assert r.json()["request"]["negative_prompt"] is None


def test_another_served_size_is_kept(gateway: httpx.Client) -> None:
    width, height = next(s for s in TEXT_SIZES if s != TEXT_NATIVE and s[0] != s[1])
    r = text_job(gateway, prompt="a dog", width=width, height=height)
    assert r.status_code == 202, r.text
    assert (r.json()["request"]["width"], r.json()["request"]["height"]) == (width, height)


def test_the_condition_must_fit_the_model_kind(gateway: httpx.Client) -> None:
    assert_422_naming(text_job(gateway, prompt="a cat", class_label=1), "class_label")
    assert_422_naming(text_job(gateway, class_label=1), "class_label")
    assert_422_naming(text_job(gateway), "prompt")  # required by a text model
    assert_422_naming(text_job(gateway, negative_prompt="blurry"), "prompt")
    mnist = {"model": MNIST, "class_label": 3}
    assert_422_naming(gateway.post("/v1/jobs", json={**mnist, "prompt": "a three"}), "prompt")
    assert_422_naming(gateway.post("/v1/jobs", json={**mnist, "negative_prompt": "x"}), "negative_prompt")
    assert gateway.post("/v1/jobs", json=mnist).status_code == 202  # the class model as before


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompts_are_bounded_strings_without_control_characters(gateway: httpx.Client, field: str) -> None:

    def with_field(value: object) -> httpx.Response:
        return text_job(gateway, **{"prompt": "a cat", field: value})

    assert with_field("x" * MAX_PROMPT_CHARS).status_code == 202
    assert_422_naming(with_field("x" * (MAX_PROMPT_CHARS + 1)), field)
    assert_422_naming(with_field(42), field)
    assert_422_naming(with_field("a\x00cat"), field)
    assert_422_naming(with_field("a\x1b[2Jcat"), field)
    assert with_field("a cat,\n\tin a hat").status_code == 202


def test_prompts_at_their_bound_fit_the_body_limit_even_escaped(gateway: httpx.Client) -> None:
    # Outside the BMP, a character \u-escaped is 12 bytes: both prompts at the bound still fit.
    wide = "\N{GRINNING FACE}" * MAX_PROMPT_CHARS
    body = json.dumps({"model": TEXT_MODEL, "prompt": wide, "negative_prompt": wide}, ensure_ascii=True)
    r = gateway.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text[:500]
    assert r.json()["request"]["prompt"] == wide


def test_width_and_height_go_together(gateway: httpx.Client) -> None:
    assert_422_naming(text_job(gateway, prompt="a cat", width=TEXT_NATIVE[0]), "height")
    assert_422_naming(text_job(gateway, prompt="a cat", height=TEXT_NATIVE[1]), "width")


def test_a_size_not_served_is_refused_listing_the_sizes(gateway: httpx.Client) -> None:
    err = assert_422_naming(text_job(gateway, prompt="a cat", width=128, height=64), "width")
    assert all(f"{w}x{h}" in err["message"] for w, h in TEXT_SIZES)
    allowed = [{"width": w, "height": h} for w, h in TEXT_SIZES]
    assert {d["field"] for d in err["details"]} == {"width", "height"}
    assert all(d["allowed"] == allowed for d in err["details"])
    # A size the text model serves is still not one the MNIST model does.
    err = assert_422_naming(
        gateway.post("/v1/jobs", json={"model": MNIST, "class_label": 1, "width": 64, "height": 64}), "width"
    )
    assert "28x28" in err["message"]


def test_models_shows_kind_and_sizes_for_both(gateway: httpx.Client) -> None:
    body = gateway.get("/v1/models").json()
    assert body["default_model"] == MNIST
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {MNIST, TEXT_MODEL}
    text, mnist = models[TEXT_MODEL], models[MNIST]
    assert text["kind"] == "text-to-image" and mnist["kind"] == "class-conditional"
    assert text["classes"] == [] and mnist["classes"] == [str(i) for i in range(10)]
    assert text["sizes"] == [{"width": w, "height": h} for w, h in TEXT_SIZES]
    assert text["sizes"][0] == {"width": TEXT_NATIVE[0], "height": TEXT_NATIVE[1]}  # native first
    assert mnist["sizes"] == [{"width": 28, "height": 28}]
    assert text["max_prompt_tokens"] == TEXT_MAX_TOKENS and text["max_prompt_length"] == MAX_PROMPT_CHARS
    assert mnist["max_prompt_tokens"] is None and mnist["max_prompt_length"] is None
    assert text["image"] == {"channels": 3, "width": TEXT_NATIVE[0], "height": TEXT_NATIVE[1]}
    assert text["prediction_type"] == "epsilon" and "dpmpp_2m" in text["samplers"]


def test_unknown_fields_are_still_rejected(gateway: httpx.Client) -> None:
    assert_422_naming(text_job(gateway, prompt="a cat", prompt_2="a dog"), "prompt_2")
    assert_422_naming(text_job(gateway, prompt="a cat", size="64x64"), "size")


def test_ready_reports_workers_of_both_models(gateway: httpx.Client) -> None:
    r = gateway.get("/readyz")
    assert r.status_code == 200 and r.json()["workers"] == {MNIST: 0, TEXT_MODEL: 0}
