"""OpenAI's Images API with OpenAI's own SDK: the tiny random SD pipeline imported into a store
(beside the MNIST class model), Valkey, two gateways and a worker as processes.

Gateway ``main`` runs with default limits; gateway ``tight`` (same Valkey, same queue) with a
2 s wait, one waiting request per key, a burst of two submissions per key and an absolute
public base URL. ``tiny-sd-idle`` is the same model under another name with no worker: its
jobs stay queued, so its requests wait to the end.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.auth import hash_key
from tests.conftest import Stack, stack_env, wait_for
from tests.stores import MNIST

openai = pytest.importorskip("openai")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tooling.importer import ImportOptions, import_pipeline  # noqa: E402
from tooling.tiny_pipelines import build_tiny_sd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL, IDLE = "tiny-sd", "tiny-sd-idle"
NATIVE, OTHER = "32x32", "48x32"  # the tiny pipeline's native size and the one imported beside it
KEYS_PLAIN = {
    name: f"dq_{name}-openai-{uuid.uuid4().hex}" for name in ("alice", "bob", "carol", "erin", "fred", "gina")
}
KEYS = ",".join(f"{name}:{hash_key(key)}" for name, key in KEYS_PLAIN.items())
PUBLIC = "https://images.example.test"
OURS = {"seed": 4242, "steps": 5, "sampler": "dpmpp_2m", "guidance_scale": 4.0, "negative_prompt": "dark"}


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openai")
    store = root / "store"
    sd = build_tiny_sd(root / "tiny-sd-src", seed=0)
    import_pipeline(sd, MODEL, store=store, options=ImportOptions(sizes=[(48, 32)]))
    shutil.copytree(ROOT / "model_store" / MNIST, store / MNIST)
    # The same model under another name, served by no worker.
    for version in (store / MODEL).iterdir():
        shutil.copytree(version, store / IDLE / version.name)
        manifest_path = store / IDLE / version.name / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "name": IDLE}))
    return store


@pytest.fixture(scope="module")
def stacks(
    valkey: str, model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Stack]]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    common = {
        "DIFFQ_MODEL_STORE": str(model_store),
        "DIFFQ_DEFAULT_MODEL": MODEL,
        "DIFFQ_AUTH": "required",
        "DIFFQ_API_KEYS": KEYS,
    }
    main = Stack(env=stack_env(valkey, prefix, **common), logs=tmp_path_factory.mktemp("main"))
    tight = Stack(
        env=stack_env(
            valkey,
            prefix,
            **common,
            DIFFQ_MAX_WAIT_SECONDS="2",
            DIFFQ_MAX_WAITERS_PER_KEY="1",
            DIFFQ_RATE_LIMIT_BURST="2",
            DIFFQ_RATE_LIMIT_PER_SECOND="0.01",
            DIFFQ_PUBLIC_BASE_URL=PUBLIC,
        ),
        logs=tmp_path_factory.mktemp("tight"),
    )
    try:
        main.start_gateway()
        tight.start_gateway()
        main.start_worker("worker-sd", DIFFQ_MODEL=MODEL)
        main.wait_ready(timeout=120)
        yield {"main": main, "tight": tight}
    finally:
        main.stop_all()
        tight.stop_all()


def client(stack: Stack, key: str | None = "alice") -> Any:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=KEYS_PLAIN[key] if key else "sk-not-a-key-of-ours",
        max_retries=0,
        timeout=60,
    )


def http(stack: Stack, key: str = "alice") -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS_PLAIN[key]}"}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=60)


def png_of(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_b64_json_images_decode_and_match_the_same_job_byte_for_byte(stacks: dict[str, Stack]) -> None:
    main = stacks["main"]
    result = client(main).images.generate(
        model=MODEL,
        prompt="a red circle on the left",
        n=2,
        size=OTHER,
        response_format="b64_json",
        user="end-user-7",
        quality="standard",  # accepted: changes nothing here
        extra_body=OURS,
    )
    assert abs(result.created - time.time()) < 120
    assert len(result.data) == 2 and all(d.url is None and d.revised_prompt is None for d in result.data)
    pngs = [base64.b64decode(d.b64_json) for d in result.data]
    assert all(png_of(p).size == (48, 32) and png_of(p).mode == "RGB" for p in pngs)
    assert pngs[0] != pngs[1]  # image i is drawn from seed + i
    with http(main) as h:
        body = {
            "model": MODEL,
            "prompt": "a red circle on the left",
            "num_images": 2,
            "width": 48,
            "height": 32,
        }
        job = h.post("/v1/jobs", json={**body, **OURS}).json()
        done = wait_for(h, job["id"], {"succeeded"})
        assert [h.get(image["url"]).content for image in done["images"]] == pngs


def test_url_images_are_the_jobs_image_route(stacks: dict[str, Stack]) -> None:
    main = stacks["main"]
    raw = client(main).images.with_raw_response.generate(model=MODEL, prompt="blue square", extra_body=OURS)
    result = raw.parse()
    job_url = raw.headers["location"]
    assert [d.url for d in result.data] == [f"{job_url}/images/0"]  # relative: no public base URL set
    with http(main) as h:
        job = h.get(job_url).json()
        assert job["status"] == "succeeded"
        assert (job["request"]["width"], job["request"]["height"]) == (32, 32)  # no size: the native one
        image = h.get(result.data[0].url)
        assert image.status_code == 200 and png_of(image.content).size == (32, 32)
        # The same request again, as b64_json: the same bytes.
        again = client(main).images.generate(
            model=MODEL, prompt="blue square", response_format="b64_json", size=NATIVE, extra_body=OURS
        )
        assert base64.b64decode(again.data[0].b64_json) == image.content
    # Another key cannot fetch it: as if it did not exist.
    with http(main, "bob") as other:
        assert other.get(result.data[0].url).status_code == 404


def test_with_a_public_base_url_the_url_is_absolute(stacks: dict[str, Stack]) -> None:
    result = client(stacks["tight"], "fred").images.generate(model=MODEL, prompt="x", extra_body=OURS)
    assert result.data[0].url is not None and result.data[0].url.startswith(f"{PUBLIC}/v1/jobs/")


@pytest.mark.parametrize("size", ["1024x1024", "64x", "0x0", "99999x99999", "64×64", "32X32"])
def test_a_bad_size_is_a_bad_request_naming_size(stacks: dict[str, Stack], size: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(stacks["main"]).images.generate(model=MODEL, prompt="x", size=size)
    error = caught.value
    assert error.status_code == 400 and error.param == "size" and error.code == "invalid_value"
    assert error.type == "invalid_request_error"
    assert set(error.body) >= {"message", "type", "param", "code"}


def test_an_unknown_model_is_not_found(stacks: dict[str, Stack]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(stacks["main"]).images.generate(model="dall-e-3", prompt="x")
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_the_class_model_is_a_bad_request(stacks: dict[str, Stack]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(stacks["main"]).images.generate(model=MNIST, prompt="a three")
    assert caught.value.code == "model_not_supported" and "class_label" in caught.value.message


@pytest.mark.parametrize("key", [None, "unknown"])
def test_a_missing_or_unknown_key_is_an_authentication_error(
    stacks: dict[str, Stack], key: str | None
) -> None:
    base = stacks["main"].base_url
    if key is None:
        r = httpx.post(f"{base}/v1/images/generations", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and set(r.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
        return
    with pytest.raises(openai.AuthenticationError) as caught:
        client(stacks["main"], None).images.generate(model=MODEL, prompt="x")
    assert caught.value.code == "invalid_api_key"


def test_past_the_keys_rate_limit_a_rate_limit_error_with_retry_after(stacks: dict[str, Stack]) -> None:
    bob = client(stacks["tight"], "bob")
    for _ in range(2):  # the burst
        bob.images.generate(model=MODEL, prompt="x", extra_body=OURS)
    with pytest.raises(openai.RateLimitError) as caught:
        bob.images.generate(model=MODEL, prompt="x", extra_body=OURS)
    assert caught.value.code == "rate_limited" and caught.value.type == "requests"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_past_the_wait_a_504_names_the_job_which_goes_on(stacks: dict[str, Stack]) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client(stacks["tight"], "carol").images.generate(model=IDLE, prompt="x")
    assert 1.5 < time.monotonic() - started < 30
    error = caught.value
    assert error.status_code == 504 and error.code == "job_timeout"
    assert error.response.headers["x-should-retry"] == "false"  # a retry would queue it again
    job_id = error.body["job_id"]
    assert error.response.headers["location"] == f"/v1/jobs/{job_id}" and job_id in error.message
    with http(stacks["tight"], "carol") as h:
        assert h.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"


def test_waiting_requests_count_against_the_keys_waiting_bound(stacks: dict[str, Stack]) -> None:
    tight = stacks["tight"]
    first: list[Exception] = []

    def wait_on_idle() -> None:
        try:
            client(tight, "erin").images.generate(model=IDLE, prompt="x")
        except Exception as e:
            first.append(e)

    holder = threading.Thread(target=wait_on_idle)
    holder.start()
    time.sleep(0.7)  # the first is waiting (2 s) and holds erin's one place
    with pytest.raises(openai.RateLimitError) as caught:
        client(tight, "erin").images.generate(model=MODEL, prompt="y")
    holder.join(30)
    assert caught.value.code == "too_many_waiters"
    # The advice fits this route (it has no Prefer: wait to drop).
    assert "POST /v1/jobs" in caught.value.message and "Prefer" not in caught.value.message
    assert first and isinstance(first[0], openai.InternalServerError) and first[0].code == "job_timeout"
    # Refused before anything was done: it took none of erin's burst of two (the idle job took
    # one, this takes the other), and her waiting place is back.
    after = client(tight, "erin").images.with_raw_response.generate(model=MODEL, prompt="z", extra_body=OURS)
    assert after.status_code == 200


@pytest.mark.parametrize(
    "payload, param, code",
    [
        ({"prompt": "x" * 2001}, "prompt", "invalid_value"),
        ({"prompt": "x", "user": "u" * 257}, "user", "invalid_value"),
        ({"prompt": "x", "n": 17}, "n", "invalid_value"),
        ({"prompt": "x", "n": 0}, "n", "invalid_value"),
        ({"prompt": "x", "foo": 1}, "foo", "unknown_parameter"),
        ({"prompt": "x", "num_images": 2}, "num_images", "unknown_parameter"),
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "x", "quality": "hd"}, "quality", "unsupported_value"),
        ({"prompt": "x", "style": "vivid"}, "style", "unsupported_value"),
        ({"prompt": "x", "stream": True}, "stream", "unsupported_value"),
        ({"prompt": "x", "steps": 10_000}, "steps", "invalid_value"),
        ({"prompt": "x", "sampler": "nope"}, "sampler", "invalid_value"),
    ],
)
def test_attacks_and_bad_values_are_400s_in_openai_shape(
    stacks: dict[str, Stack], payload: dict[str, Any], param: str, code: str
) -> None:
    with http(stacks["main"]) as h:
        r = h.post("/v1/images/generations", json={"model": MODEL, **payload})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error


def test_a_body_past_the_size_limit_and_non_json_are_refused(stacks: dict[str, Stack]) -> None:
    with http(stacks["main"]) as h:
        huge = h.post("/v1/images/generations", json={"model": MODEL, "prompt": "x" * 200_000})
        assert huge.status_code == 413  # the protocol layer's answer, in the service's body
        assert huge.json()["error"]["type"] == "payload_too_large"
        bad = h.post(
            "/v1/images/generations", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        # The job routes keep the service's own error body.
        ours = h.post("/v1/jobs", json={"model": MODEL, "prompt": "x", "width": 1, "height": 1})
        assert ours.status_code == 422 and ours.json()["error"]["type"] == "validation_error"


def test_an_idempotency_key_returns_the_first_jobs_images(stacks: dict[str, Stack]) -> None:
    alice = client(stacks["main"])
    key = {"Idempotency-Key": f"openai-{uuid.uuid4().hex}"}
    ask = {"model": MODEL, "prompt": "green triangle", "response_format": "b64_json", "extra_headers": key}
    first = alice.images.with_raw_response.generate(**ask)  # no seed: one is drawn
    again = alice.images.with_raw_response.generate(**ask)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.parse().data[0].b64_json == first.parse().data[0].b64_json
    with pytest.raises(openai.ConflictError) as caught:
        alice.images.generate(**{**ask, "prompt": "another prompt"})
    assert caught.value.code == "idempotency_conflict"
    assert caught.value.response.headers["x-should-retry"] == "false"


def cancelled_jobs(stack: Stack, model: str) -> float:
    with http(stack) as h:
        text = h.get("/metrics").text
    samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
    return sum(
        s.value
        for s in samples
        if s.name == "diffq_jobs_finished_total" and s.labels == {"model": model, "status": "cancelled"}
    )


def test_a_client_that_goes_away_before_its_images_takes_its_job_with_it(stacks: dict[str, Stack]) -> None:
    main = stacks["main"]
    before = cancelled_jobs(main, IDLE)
    impatient = openai.OpenAI(
        base_url=f"{main.base_url}/v1", api_key=KEYS_PLAIN["gina"], max_retries=0, timeout=1.0
    )
    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(model=IDLE, prompt="x")  # the server would wait 60 s
    deadline = time.monotonic() + 20
    while cancelled_jobs(main, IDLE) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancelled_jobs(main, IDLE) == before + 1  # nobody learnt its id: nobody could fetch it
