"""The gateway against a real Valkey, with no worker running (jobs stay queued)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from diffq.serve import free_port
from model_store.store import ModelStore
from tests.conftest import Stack, stack_env


@pytest.fixture(scope="module")
def gateway(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One gateway for the module, on its own key prefix, with no worker."""
    stack = Stack(env=stack_env(valkey, f"t{uuid.uuid4().hex[:10]}"), logs=tmp_path_factory.mktemp("gw"))
    stack.start_gateway()
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as client:
            yield client
    finally:
        stack.stop_all()


def submit(client: httpx.Client, **body: object) -> httpx.Response:
    return client.post("/v1/jobs", json=body)


def test_submit_answers_202_with_location_and_defaults(gateway: httpx.Client) -> None:
    r = submit(gateway, class_label=3)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert len(job["id"]) == 32 and int(job["id"], 16) >= 0
    assert job["status"] == "queued"
    models = gateway.get("/v1/models").json()
    default = next(m for m in models["models"] if m["name"] == models["default_model"])
    req = job["request"]
    assert req["model"] == default["name"]
    assert req["sampler"] == default["default_sampler"]
    assert req["steps"] == default["default_steps"]
    assert req["guidance_scale"] == default["default_guidance_scale"]
    assert 0 <= req["seed"] < 2**63  # drawn and reported back
    assert job["progress"] == {"step": 0, "total": req["steps"]}
    assert job["images"] == [] and job["error"] is None
    assert job["timings"]["created_at"].endswith("+00:00")


def test_queue_positions_count_up(gateway: httpx.Client) -> None:
    ids = [submit(gateway, class_label=1, seed=i).json()["id"] for i in range(3)]
    positions = [gateway.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids]
    # Other tests in this module left queued jobs ahead (there is no worker): count relative.
    assert positions[0] >= 1
    assert positions[1:] == [positions[0] + 1, positions[0] + 2]


def test_get_returns_the_submitted_job(gateway: httpx.Client) -> None:
    job = submit(
        gateway, class_label=None, num_images=3, steps=5, sampler="ddim", guidance_scale=0, seed=42
    ).json()
    got = gateway.get(f"/v1/jobs/{job['id']}").json()
    assert got["request"] == {
        "model": job["request"]["model"],
        "class_label": None,
        "num_images": 3,
        "steps": 5,
        "sampler": "ddim",
        "guidance_scale": 0.0,
        "seed": 42,
        "priority": "normal",
        "deadline_seconds": None,
        "prompt": None,
        "negative_prompt": None,
        "width": 28,  # the native size, filled in
        "height": 28,
    }


BAD_REQUESTS = [
    ({"class_label": 3, "colour": "red"}, "colour"),
    ({"class_label": "3"}, "class_label"),
    ({"class_label": 10}, "class_label"),
    ({"class_label": -1}, "class_label"),
    ({"class_label": True}, "class_label"),
    ({"num_images": 0}, "num_images"),
    ({"num_images": 17}, "num_images"),
    ({"num_images": 2.5}, "num_images"),
    ({"steps": 0}, "steps"),
    ({"steps": 1001}, "steps"),
    ({"sampler": "heun"}, "sampler"),
    ({"guidance_scale": -0.5}, "guidance_scale"),
    ({"guidance_scale": 21}, "guidance_scale"),
    ({"guidance_scale": "high"}, "guidance_scale"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"model": "no-such-model"}, "model"),
    ({"class_label": 3, "prompt": "a seven"}, "prompt"),  # a class model takes no prompt
    ({"class_label": 3, "negative_prompt": ""}, "negative_prompt"),
    ({"class_label": 3, "width": 28}, "height"),  # both or neither
    ({"class_label": 3, "height": 28}, "width"),
    ({"class_label": 3, "width": 56, "height": 56}, "width"),  # not a size the model serves
    ({"class_label": 3, "width": 0, "height": 28}, "width"),
    ({"class_label": 3, "width": 28.0, "height": 28}, "width"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS)
def test_bad_requests_get_422_naming_the_field(gateway: httpx.Client, body: dict, field: str) -> None:
    r = gateway.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "validation_error"
    assert field in err["message"]
    assert any(d["field"] == field for d in err["details"])


def test_malformed_json_and_non_object_bodies(gateway: httpx.Client) -> None:
    r = gateway.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    r = gateway.post("/v1/jobs", json=[1, 2])
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


def test_oversized_body_gets_413(gateway: httpx.Client) -> None:
    r = gateway.post(
        "/v1/jobs", content=b"{" + b" " * 100_000 + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"


def test_unknown_job_is_404(gateway: httpx.Client) -> None:
    for job_id in ("0" * 32, "not-an-id"):
        r = gateway.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
        assert gateway.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert gateway.get(f"/v1/jobs/{job_id}/images/0").status_code == 404


def test_cancel_a_queued_job_then_409(gateway: httpx.Client) -> None:
    job = submit(gateway, class_label=2).json()
    r = gateway.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert gateway.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    r = gateway.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"


def test_images_of_an_unfinished_job_are_404(gateway: httpx.Client) -> None:
    job = submit(gateway, class_label=2).json()
    assert gateway.get(f"/v1/jobs/{job['id']}/images/0").status_code == 404


def test_models_lists_the_contract(gateway: httpx.Client) -> None:
    body = gateway.get("/v1/models").json()
    m = body["models"][0]
    assert body["default_model"] == m["name"]
    assert m["classes"] == [str(i) for i in range(10)]
    assert set(m["samplers"]) >= {"ddpm", "ddim", "dpmpp_2m", "euler_ancestral"}
    assert m["min_steps"] == 1 and m["max_steps"] == 1000
    assert m["image"] == {"channels": 1, "height": 28, "width": 28}
    assert m["kind"] == "class-conditional"
    assert m["sizes"] == [{"width": 28, "height": 28}]
    assert m["max_prompt_length"] is None and m["max_prompt_tokens"] is None


def test_ready_without_workers_reports_them(gateway: httpx.Client) -> None:
    # Jobs queue while workers scale up from zero, so the gateway stays ready without them.
    assert gateway.get("/livez").json()["status"] == "ok"
    r = gateway.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"redis": True}
    # Every served model (the shipped store holds two), none with a worker yet.
    shipped = {m.manifest.name for m in ModelStore().models()}
    assert {"mnist-cfg-unet", "shapes-sd"} <= shipped
    assert r.json()["workers"] == dict.fromkeys(shipped, 0)


def test_not_ready_without_redis(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    stack.start_gateway()
    r = httpx.get(f"{stack.base_url}/readyz", timeout=10)
    assert r.status_code == 503 and r.json()["checks"] == {"redis": False}
    assert httpx.get(f"{stack.base_url}/livez", timeout=10).status_code == 200


def test_unknown_route_is_json_404(gateway: httpx.Client) -> None:
    r = gateway.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_prefer_wait_is_bounded_and_reported(gateway: httpx.Client) -> None:
    job = submit(gateway, class_label=1, seed=5).json()  # no worker: it stays queued
    started = time.monotonic()
    r = gateway.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=1"})
    assert time.monotonic() - started >= 0.9  # it did hold the answer
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert r.headers["Preference-Applied"] == "wait=1"
    assert "Preference-Applied" not in gateway.get(f"/v1/jobs/{job['id']}").headers
