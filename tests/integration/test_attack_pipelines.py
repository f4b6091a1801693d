"""Attacks on latent text-to-image serving: what a client, a job injected past the gateway, a
failing component and a broken import may do, each asserting the behaviour the service owes.

Workers run in this process in burst mode over tiny random pipelines (built from configs,
imported once per module); jobs go straight into Redis, bypassing the gateway's checks.
"""

from __future__ import annotations

import io
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from diffq.jobs import Job, JobRequest, Status, new_job_id
from diffq.store import RedisStore
from model_store.store import ChecksumMismatch, ModelStore
from tests.conftest import worker_settings
from tests.stores import TEXT_MODEL, text_model_store
from workers.main import build_worker
from workers.pipeline import TextEncoder
from workers.worker import Worker

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tooling.importer import ImportOptions, ImportRefused, import_pipeline
from tooling.importer.store_entry import staged_entry
from tooling.tiny_pipelines import build_tiny_dit, build_tiny_sd

SD, DIT = "tiny-sd", "tiny-dit"
WIDE = (48, 32)  # the second served size (native 32x32); latent 12x8 at factor 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attack")
    store = root / "store"
    sd = build_tiny_sd(root / "sd-src", seed=0)
    import_pipeline(sd, SD, store=store, options=ImportOptions(sizes=[WIDE], default_steps=4))
    import_pipeline(build_tiny_dit(root / "dit-src", seed=1), DIT, store=store)
    return store


@pytest.fixture(scope="module")
def sd_src(store: Path) -> Path:
    return store.parent / "sd-src"


def request(model: str, **kw: Any) -> JobRequest:
    values: dict[str, Any] = dict(
        model=model, class_label=None, num_images=1, steps=3, sampler="ddim", guidance_scale=3.0, seed=1
    )
    return JobRequest(**{**values, **kw})


def serve(
    valkey: str,
    store: Path,
    model: str,
    requests: list[JobRequest],
    patch: Callable[[Worker], None] | None = None,
) -> tuple[RedisStore, list[Job]]:
    """Queue ``requests`` straight into Redis, drain them with an in-process burst worker."""
    prefix = f"a{uuid.uuid4().hex[:10]}"
    redis = RedisStore(valkey, prefix=prefix)
    redis.ensure_group(model)
    jobs = [Job(new_job_id(), r, Status.QUEUED, time.time()) for r in requests]
    for job in jobs:
        redis.submit(job)
    worker = build_worker(worker_settings(valkey, prefix, model=model, model_store=store))
    if patch is not None:
        patch(worker)
    worker.run(burst=True)
    final = redis.get_many([j.id for j in jobs])
    assert all(j is not None for j in final)
    return redis, [j for j in final if j is not None]


def statuses(jobs: list[Job]) -> list[tuple[str, str | None]]:
    return [(j.status.value, j.error.type if j.error else None) for j in jobs]


def image(redis: RedisStore, job: Job) -> np.ndarray:
    data = redis.get_image(job.id, 0)
    assert data is not None
    return np.asarray(Image.open(io.BytesIO(data)))


# ---- gateway ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from service.app import create_app
    from service.config import GatewaySettings

    root = text_model_store(tmp_path_factory.mktemp("gw-store"))
    settings = GatewaySettings(
        model_store=root, redis_url=valkey, key_prefix=f"g{uuid.uuid4().hex[:10]}", auth="off"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _post_raw(client: TestClient, raw: str) -> Any:
    return client.post("/v1/jobs", content=raw.encode(), headers={"content-type": "application/json"})


def test_gateway_refuses_c1_control_characters_in_prompts(gateway: TestClient) -> None:
    # U+009B is the 8-bit CSI (an escape-sequence introducer, like ESC [), U+0085 NEL: the same
    # log/record hazard the C0 rule exists for.
    for field in ("prompt", "negative_prompt"):
        for ch in ("\\u009b", "\\u0085", "\\u0080"):
            r = _post_raw(gateway, f'{{"model": "{TEXT_MODEL}", "prompt": "a", "{field}": "x{ch}31m"}}')
            assert r.status_code == 422, (field, ch, r.text)
            err = r.json()["error"]
            assert err["type"] == "validation_error" and err["details"][0]["field"] == field


def test_gateway_refuses_lone_surrogates_naming_the_field(gateway: TestClient) -> None:  # held
    for field in ("prompt", "negative_prompt"):
        r = _post_raw(gateway, f'{{"model": "{TEXT_MODEL}", "prompt": "a", "{field}": "\\ud800"}}')
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == field
    r = _post_raw(gateway, f'{{"model": "{TEXT_MODEL}", "prompt": "\\ud83d\\ude00"}}')  # a valid pair
    assert r.status_code == 202, r.text
    assert r.json()["request"]["prompt"] == "\U0001f600"


# ---- worker: jobs the gateway would have refused --------------------------------------------


def test_worker_refuses_prompts_sent_to_a_class_models_queue(valkey: str, store: Path) -> None:
    """A prompt on a class-conditional model must fail the job, not be silently ignored."""
    _, jobs = serve(
        valkey,
        store,
        DIT,
        [request(DIT, prompt="a cat"), request(DIT, class_label=1, negative_prompt="a dog")],
    )
    assert statuses(jobs) == [("failed", "invalid_request")] * 2


def test_worker_refuses_class_labels_and_missing_prompts_on_a_text_model(valkey: str, store: Path) -> None:
    _, jobs = serve(valkey, store, SD, [request(SD, class_label=3), request(SD, prompt="a", class_label=3)])
    assert statuses(jobs) == [("failed", "invalid_request")] * 2


def test_worker_refuses_a_half_specified_size(valkey: str, store: Path) -> None:
    """width without height (or the reverse) is refused by the gateway; the worker must not
    fill in the native side and serve a size nobody asked for."""
    w, h = WIDE
    _, jobs = serve(valkey, store, SD, [request(SD, prompt="a", width=w), request(SD, prompt="a", height=h)])
    assert statuses(jobs) == [("failed", "invalid_request")] * 2


def test_worker_refuses_an_unserved_size(valkey: str, store: Path) -> None:  # held
    _, jobs = serve(valkey, store, SD, [request(SD, prompt="a", width=36, height=32)])
    assert statuses(jobs) == [("failed", "invalid_request")]


# ---- worker: failures confined to the jobs they concern ----------------------------------------


def test_one_unencodable_prompt_fails_only_its_own_job(valkey: str, store: Path) -> None:
    """A lone surrogate (possible in a record written past the gateway) makes the tokenizer
    raise; the jobs encoded in the same text-encoder call must still succeed."""
    _, jobs = serve(valkey, store, SD, [request(SD, prompt="a red cat"), request(SD, prompt="bad \ud800")])
    assert statuses(jobs)[0] == ("succeeded", None)
    assert statuses(jobs)[1] == ("failed", "invalid_request")


def _fail_for_wide_latents(run: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def failing(x: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        if x.shape[-1] == WIDE[0] // 4:
            raise RuntimeError("injected failure for the wide latent")
        return run(x, *rest)

    return failing


def test_a_vae_failure_for_one_size_fails_only_that_sizes_jobs(valkey: str, store: Path) -> None:
    """Both jobs finish at the same step; the decoder makes one call per size. The call for
    the wide size fails: only its job may fail."""

    def patch(worker: Worker) -> None:
        component = worker.decoder.component
        assert component is not None
        component.run = _fail_for_wide_latents(component.run)  # type: ignore[method-assign]

    w, h = WIDE
    _, jobs = serve(
        valkey, store, SD, [request(SD, prompt="a"), request(SD, prompt="b", width=w, height=h)], patch
    )
    assert statuses(jobs) == [("succeeded", None), ("failed", "inference_error")]


def test_a_denoiser_failure_for_one_size_fails_only_that_sizes_jobs(valkey: str, store: Path) -> None:
    def patch(worker: Worker) -> None:
        worker.engine.run = _fail_for_wide_latents(worker.engine.run)  # type: ignore[method-assign]

    w, h = WIDE
    _, jobs = serve(
        valkey, store, SD, [request(SD, prompt="a"), request(SD, prompt="b", width=w, height=h)], patch
    )
    assert statuses(jobs) == [("succeeded", None), ("failed", "inference_error")]


def test_two_sizes_in_one_batch_match_each_alone(valkey: str, store: Path) -> None:  # held
    w, h = WIDE
    a, b = request(SD, prompt="red", seed=5), request(SD, prompt="blue", seed=6, width=w, height=h)
    redis, both = serve(valkey, store, SD, [a, b])
    assert statuses(both) == [("succeeded", None)] * 2
    for req, job in zip((a, b), both, strict=True):
        alone_redis, (alone,) = serve(valkey, store, SD, [req])
        got, want = image(redis, job), image(alone_redis, alone)
        assert got.shape == (req.height or 32, req.width or 32, 3)
        assert np.array_equal(got, want)


def test_odd_prompts_are_served(valkey: str, store: Path) -> None:  # held
    prompts = ["", "!!!???...", "\u200b" * 50, "\U0001f600" * 2000, "a " * 1000, "e" + "\u0301" * 500]
    _, jobs = serve(valkey, store, SD, [request(SD, prompt=p, steps=1) for p in prompts])
    assert statuses(jobs) == [("succeeded", None)] * len(prompts)


def test_the_embedding_cache_stays_bounded() -> None:  # held
    class Stub:
        def run(self, ids: np.ndarray) -> np.ndarray:
            return np.repeat(ids[:, :, None].astype(np.float32), 2, axis=2)

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(length=4, pad_id=1)
    tok.enable_truncation(max_length=4)
    enc = TextEncoder(tok, Stub(), cache_size=8)  # type: ignore[arg-type]
    for i in range(50):
        enc.encode([f"p{i}", f"q{i}", "", ""])
        assert len(enc._cache) <= 8


def test_a_tampered_text_encoder_stops_the_worker_at_start(
    valkey: str, store: Path, tmp_path: Path
) -> None:  # held
    copy = tmp_path / "store"
    shutil.copytree(store / SD, copy / SD)
    path = copy / SD / "1" / "text_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"text_encoder\.onnx"):
        build_worker(worker_settings(valkey, "unused", model=SD, model_store=copy))


# ---- importer and store -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(0, 32), (32, -4), (8192, 32)])
def test_import_refuses_impossible_sizes_before_any_export(
    sd_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    """Sizes outside 1..4096 must be refused up front naming ``sizes``: not after exporting
    and running every component (8192 wide costs ~40 s of CPU and ends in a manifest error)."""
    import tooling.importer.run as run

    def no_export(*_: object, **__: object) -> None:
        raise AssertionError("the export started")

    monkeypatch.setattr(run, "_build", no_export)
    with pytest.raises(ImportRefused) as refused:
        import_pipeline(sd_src, "odd", store=tmp_path / "store", options=ImportOptions(sizes=[size]))
    assert refused.value.field == "sizes"


def test_a_store_with_an_interrupted_overwrite_still_serves(store: Path, tmp_path: Path, monkeypatch) -> None:
    """``--overwrite`` moves the old entry to ``.replaced-<name>-<version>-*/<version>/`` and
    deletes it after the rename. Killed in between (here: the delete never happens), the
    store must still list its models: a leftover that matched ``*/*/manifest.json`` would make
    every ModelStore read (gateway and workers alike) fail."""
    import tooling.importer.store_entry as store_entry

    root = tmp_path / "store"
    shutil.copytree(store / DIT, root / DIT)
    monkeypatch.setattr(store_entry.shutil, "rmtree", lambda *a, **k: None)
    with staged_entry(root, DIT, "1", overwrite=True) as staging:
        for f in (root / DIT / "1").iterdir():
            shutil.copy2(f, staging / f.name)
    monkeypatch.undo()
    assert [m.manifest.name for m in ModelStore(root).models()] == [DIT]


# ---- start-up -----------------------------------------------------------------------------------


def test_a_text_model_worker_measures_its_tick_and_warms_up(valkey: str, store: Path) -> None:
    """With no tick configured the worker measures its denoiser at start-up, feeding it
    hidden-state conditions (a text model's, not class labels); jobs at the second size run."""
    worker = build_worker(worker_settings(valkey, "unused", model=SD, model_store=store, max_batch_rows=0))
    assert 1 <= worker.settings.max_batch_rows <= 256
    assert worker.engine.stats.calls > 0  # the calibration's calls
    redis, (job,) = serve(valkey, store, SD, [request(SD, prompt="a cat", width=WIDE[0], height=WIDE[1])])
    assert job.status == Status.SUCCEEDED and image(redis, job).shape == (WIDE[1], WIDE[0], 3)
