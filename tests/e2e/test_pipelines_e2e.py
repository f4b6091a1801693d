"""Users' diffusers pipelines, end to end: tiny random SD-shaped and DiT-shaped pipelines built
from configs, imported with ``make import``'s code path, served by a real gateway and workers,
and every image held against diffusers' own pipeline given the documented initial latents.

The seed contract under test: image i of a job with seed s starts from the first
``standard_normal(latent_shape)`` draw of ``numpy.random.Generator(PCG64(s + i))``; diffusers
given that as ``latents`` (it multiplies by the scheduler's ``init_noise_sigma`` itself) draws
the same image, within 2/255 per pixel.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from diffq.store import RedisStore
from tests.conftest import Stack, wait_for
from tests.e2e.test_faults import FAST_LEASES, TERMINAL, eventually, running_on, submit
from tests.e2e.test_jobs_e2e import fetch_images, run_concurrently

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tooling.importer import ImportOptions, import_pipeline  # noqa: E402
from tooling.tiny_pipelines import build_tiny_dit, build_tiny_sd  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOLERANCE = 2  # of 255, per pixel
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}

# A rectified-flow model: the SD-shaped tiny UNet trained (here: drawn) for velocity, shift 3.
FLOW_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
PROMPTS = ["a red circle on the left", "blue square, white background"]
SD_JOBS = [
    # (sampler, steps, guidance, negative prompt): every deterministic sampler, guided and not
    ("ddim", 5, 1.0, None),
    ("ddim", 4, 5.0, "blurry"),
    ("dpmpp_2m", 6, 1.0, None),
    ("dpmpp_2m", 5, 4.0, "a green triangle"),
    ("euler", 5, 1.0, None),
    ("euler", 6, 3.0, "dark"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with the tiny SD pipeline (two sizes), the tiny DiT and the Optimum fixture."""
    root = tmp_path_factory.mktemp("pipelines")
    store = root / "store"
    sd = build_tiny_sd(root / "tiny-sd-src", seed=0)
    dit = build_tiny_dit(root / "tiny-dit-src", seed=1)
    flow = build_tiny_sd(root / "tiny-flow-src", seed=2, scheduler_config=FLOW_SCHEDULER)
    import_pipeline(sd, "tiny-sd", store=store, options=ImportOptions(sizes=[(48, 32)]))
    import_pipeline(dit, "tiny-dit", store=store)
    import_pipeline(FIXTURES / "optimum-tiny-sd", "optimum-sd", store=store)
    import_pipeline(flow, "tiny-flow", store=store)
    return root


@pytest.fixture(scope="module")
def oracles(store: Path) -> Iterator[dict[str, Any]]:
    from diffusers import DiTPipeline, StableDiffusionPipeline

    torch.set_num_threads(1)
    yield {
        "tiny-sd": StableDiffusionPipeline.from_pretrained(store / "tiny-sd-src"),
        "tiny-dit": DiTPipeline.from_pretrained(store / "tiny-dit-src"),
        "optimum-sd": StableDiffusionPipeline.from_pretrained(FIXTURES / "optimum-tiny-sd-source"),
        "tiny-flow": StableDiffusionPipeline.from_pretrained(store / "tiny-flow-src"),
    }


@pytest.fixture
def stack(make_stack: Callable[..., Stack], store: Path) -> Stack:
    s = make_stack(DIFFQ_MODEL_STORE=str(store / "store"), DIFFQ_DEFAULT_MODEL="tiny-sd")
    s.start_gateway()
    for model in ("tiny-sd", "tiny-dit", "optimum-sd", "tiny-flow"):
        s.start_worker(f"worker-{model}", DIFFQ_MODEL=model)
    s.wait_ready(timeout=120)
    return s


def initial_noise(seed: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """The documented initial latents: image i's is PCG64(seed + i)'s first standard normal draw."""
    return np.stack(
        [np.random.Generator(np.random.PCG64(seed + i)).standard_normal(shape) for i in range(count)]
    )


def with_scheduler(pipe: Any, sampler: str) -> Any:
    cls = getattr(diffusers, SCHEDULERS[sampler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe


def sd_reference(pipe: Any, body: dict, latent_shape: tuple[int, ...]) -> np.ndarray:
    n = body.get("num_images", 1)
    noise = initial_noise(body["seed"], n, latent_shape).astype(np.float32)
    neg = body.get("negative_prompt")
    out = with_scheduler(pipe, body["sampler"])(
        prompt=[body["prompt"]] * n,
        negative_prompt=None if neg is None else [neg] * n,
        num_inference_steps=body["steps"],
        guidance_scale=body["guidance_scale"],
        height=body.get("height"),
        width=body.get("width"),
        latents=torch.from_numpy(noise),
        output_type="np",
    ).images
    return np.round(out * 255).astype(np.uint8)


def dit_reference(
    pipe: Any, body: dict, latent_shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """DiTPipeline takes no ``latents``: its noise draw is replaced by the documented one."""
    from diffusers.pipelines.dit import pipeline_dit

    n = body.get("num_images", 1)
    noise = torch.from_numpy(initial_noise(body["seed"], n, latent_shape).astype(np.float32))
    monkeypatch.setattr(pipeline_dit, "randn_tensor", lambda *a, **k: noise.clone())
    out = with_scheduler(pipe, body["sampler"])(
        class_labels=[body["class_label"]] * n,
        guidance_scale=body["guidance_scale"],
        num_inference_steps=body["steps"],
        output_type="np",
    ).images
    return np.round(out * 255).astype(np.uint8)


def flow_reference(pipe: Any, body: dict, latent_shape: tuple[int, ...]) -> np.ndarray:
    """diffusers' StableDiffusionPipeline cannot drive a flow-matching scheduler (it has no
    ``scale_model_input``), so this is the pipeline's loop written out with diffusers' own
    scheduler, text encoding, UNet and VAE: what a rectified-flow pipeline does."""
    n, w = body.get("num_images", 1), body["guidance_scale"]
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(body["steps"])
    guided = w > 1
    cond, uncond = pipe.encode_prompt(
        [body["prompt"]] * n,
        "cpu",
        1,
        guided,
        [body["negative_prompt"]] * n if "negative_prompt" in body else None,
    )
    latents = torch.from_numpy(initial_noise(body["seed"], n, latent_shape).astype(np.float32))
    with torch.no_grad():
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if guided else latents
            context = torch.cat([uncond, cond]) if guided else cond
            out = pipe.unet(x, t, encoder_hidden_states=context).sample
            if guided:
                u, c = out.chunk(2)
                out = u + w * (c - u)
            latents = sched.step(out, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return np.round(image * 255).astype(np.uint8)


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "RGB"
    return np.asarray(image)


def assert_close(ours: list[bytes], reference: np.ndarray, label: object) -> None:
    got = np.stack([pixels(p) for p in ours])
    assert got.shape == reference.shape, label
    diff = np.abs(got.astype(int) - reference.astype(int))
    assert diff.max() <= TOLERANCE, f"{label}: max pixel difference {diff.max()}"
    # Not a comparison of flat or clipped images: most pixels lie strictly inside 0..255.
    assert np.mean((reference > 2) & (reference < 253)) > 0.3, f"{label}: reference is saturated"


def sd_bodies(model: str = "tiny-sd") -> list[dict]:
    bodies = []
    for k, (sampler, steps, guidance, negative) in enumerate(SD_JOBS):
        body = {
            "model": model,
            "prompt": PROMPTS[k % 2],
            "num_images": 2,
            "steps": steps,
            "sampler": sampler,
            "guidance_scale": guidance,
            "seed": 1000 + k,
        }
        if negative is not None:
            body["negative_prompt"] = negative
        bodies.append(body)
    return bodies


def run_alone(client: httpx.Client, bodies: list[dict]) -> list[list[bytes]]:
    out = []
    for body in bodies:
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait_for(client, r.json()["id"], {"succeeded", "failed"})
        assert job["status"] == "succeeded", job
        out.append(fetch_images(client, job))
    return out


def test_text_to_image_matches_diffusers_alone_and_in_one_batch(stack: Stack, oracles: dict) -> None:
    bodies = sd_bodies()
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        model = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "tiny-sd")
        assert model["kind"] == "text-to-image"
        assert {"ddim", "dpmpp_2m", "euler"} <= set(model["samplers"])
        alone = run_alone(client, bodies)
        together = run_concurrently(client, bodies)
        assert all(j["status"] == "succeeded" for j in together), together
        for body, images, job in zip(bodies, alone, together, strict=True):
            assert fetch_images(client, job) == images, body  # the same bytes in a shared batch
            assert_close(images, sd_reference(oracles["tiny-sd"], body, (4, 8, 8)), body)
        # The prompt and the seed matter: other inputs give other images.
        assert alone[0] != alone[1] and alone[0][0] != alone[0][1]
    # The worker timed its text-encoder and VAE-decoder calls.
    scrape = httpx.get(f"{stack.worker_urls['worker-tiny-sd']}/metrics").text
    counts = {
        stage: sum(
            s.value
            for f in text_string_to_metric_families(scrape)
            for s in f.samples
            if s.name == "diffq_stage_duration_seconds_count" and s.labels.get("stage") == stage
        )
        for stage in ("text_encoder", "vae_decoder")
    }
    assert counts["text_encoder"] >= 1 and counts["vae_decoder"] >= len(bodies), counts


def test_a_second_size_matches_diffusers(stack: Stack, oracles: dict) -> None:
    body = {"prompt": PROMPTS[0], "width": 48, "height": 32, "steps": 4, "sampler": "dpmpp_2m"}
    body |= {"guidance_scale": 3.0, "seed": 7}
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        (images,) = run_alone(client, [body])
    assert pixels(images[0]).shape == (32, 48, 3)
    assert_close(images, sd_reference(oracles["tiny-sd"], body, (4, 8, 12)), body)


@pytest.mark.parametrize(("sampler", "guidance"), [("ddim", 1.0), ("ddim", 4.0), ("dpmpp_2m", 4.0)])
def test_class_conditional_latent_model_matches_diffusers(
    stack: Stack, oracles: dict, monkeypatch: pytest.MonkeyPatch, sampler: str, guidance: float
) -> None:
    # Euler is left out here: DiTPipeline never scales its initial noise by init_noise_sigma,
    # so diffusers' own DiT pipeline is not a faithful Euler oracle.
    body = {"model": "tiny-dit", "class_label": 207, "num_images": 2, "steps": 5}
    body |= {"sampler": sampler, "guidance_scale": guidance, "seed": 31}
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        (images,) = run_alone(client, [body])
    assert_close(images, dit_reference(oracles["tiny-dit"], body, (4, 8, 8), monkeypatch), body)


def test_optimum_export_imports_and_serves(stack: Stack, oracles: dict) -> None:
    bodies = [b for b in sd_bodies("optimum-sd") if b["sampler"] == "dpmpp_2m"]
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        alone = run_alone(client, bodies)
    for body, images in zip(bodies, alone, strict=True):
        assert_close(images, sd_reference(oracles["optimum-sd"], body, (4, 8, 8)), body)


@pytest.mark.parametrize(("guidance", "negative"), [(1.0, None), (4.0, "dark")])
def test_rectified_flow_model_matches_diffusers(
    stack: Stack, oracles: dict, guidance: float, negative: str | None
) -> None:
    body = {"model": "tiny-flow", "prompt": PROMPTS[1], "num_images": 2, "steps": 6}
    body |= {"sampler": "flow_euler", "guidance_scale": guidance, "seed": 77}
    if negative is not None:
        body["negative_prompt"] = negative
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        model = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "tiny-flow")
        assert model["samplers"] == ["flow_euler"] and model["prediction_type"] == "flow"
        (images,) = run_alone(client, [body])
    assert_close(images, flow_reference(oracles["tiny-flow"], body, (4, 8, 8)), body)


def test_text_jobs_of_a_killed_worker_finish_once_elsewhere_and_cancel_mid_run(
    make_stack: Callable[..., Stack], store: Path
) -> None:
    """Exactly once holds for text jobs too: prompts are encoded again by the worker that
    takes the jobs over, and the rerun gives the same bytes; a cancel stops a text job."""
    stack = make_stack(**FAST_LEASES, DIFFQ_MODEL_STORE=str(store / "store"), DIFFQ_DEFAULT_MODEL="tiny-sd")
    stack.start_gateway()
    stack.start_worker("worker-a", DIFFQ_MODEL="tiny-sd")
    stack.wait_ready(timeout=120)
    long = {"prompt": PROMPTS[0], "steps": 400, "sampler": "euler", "guidance_scale": 3.0}
    bodies = [long | {"seed": 500 + i, "negative_prompt": f"n{i}", "num_images": 1 + i % 2} for i in range(3)]
    records = RedisStore(stack.env["REDIS_URL"], stack.env["DIFFQ_KEY_PREFIX"])
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        ids = [submit(client, b) for b in bodies]
        cancel_id = submit(client, long | {"seed": 9})

        def all_running() -> list[str] | None:
            running = running_on(records, [*ids, cancel_id], "worker-a")
            return running if len(running) == 4 else None

        eventually(all_running, 60, "four text jobs running on worker-a")
        assert client.delete(f"/v1/jobs/{cancel_id}").status_code == 202
        assert wait_for(client, cancel_id, TERMINAL)["status"] == "cancelled"
        assert stack.stop("worker-a", signal.SIGKILL) == -signal.SIGKILL
        stack.start_worker("worker-b", DIFFQ_MODEL="tiny-sd")
        jobs = [wait_for(client, i, TERMINAL, timeout=120) for i in ids]
        for body, job in zip(bodies, jobs, strict=True):
            assert job["status"] == "succeeded", job
            rec = records.get(job["id"])
            assert rec is not None and rec.worker == "worker-b" and rec.attempts == 2
            assert fetch_images(client, job) == run_alone(client, [body])[0]
        assert records.get_image(cancel_id, 0) is None
