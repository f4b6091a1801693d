"""What the benchmarks ask for: generation requests and when they arrive. Pure and seeded."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffq.jobs import JobRequest

MIX_SAMPLERS = ("dpmpp_2m", "ddim", "euler_ancestral", "ddpm")
MIX_STEPS = (4, 50)  # inclusive; DDPM is held to the same bound as the others

# The text-to-image mix (``text_mix``): prompts in the tiny pipelines' vocabulary
# (``tooling.tiny_pipelines``), drawn with repeats as clients send them (retries, variations).
TEXT_PROMPTS = (
    "a photo of a cat",
    "an astronaut riding a horse on the moon",
    "a red dog in the city at night",
    "a portrait of a blue cat",
    "a painting of a green horse",
    "the moon in the style of a painting",
    "a photo of the city at night",
    "a dog with a red cat",
)
NEGATIVE_PROMPTS = ("blurry", "a photo of a dog", "green")
TEXT_STEPS = (8, 20)  # inclusive
TEXT_IMAGES = (1, 2)  # inclusive
TEXT_GUIDANCE = 7.5  # SD's usual scale


@dataclass(frozen=True)
class Request:
    """One job as the benchmarks submit it (over HTTP) or replay it (in-process)."""

    sampler: str
    steps: int
    class_label: int | None
    guidance_scale: float
    seed: int
    num_images: int = 1
    prompt: str | None = None  # text-to-image models
    negative_prompt: str | None = None
    width: int | None = None  # None: the model's native size
    height: int | None = None

    @property
    def rows_per_step(self) -> int:
        """Denoiser rows per step, by the service's own rule (a guided image takes two)."""
        return self.job_request().rows_per_step

    @property
    def evaluations(self) -> int:
        return self.job_request().evaluations

    def job_request(self, model: str = "") -> JobRequest:
        """This request as the service resolves it."""
        return JobRequest(
            model,
            self.class_label,
            self.num_images,
            self.steps,
            self.sampler,
            self.guidance_scale,
            self.seed,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
        )

    def body(self) -> dict[str, Any]:
        """The ``POST /v1/jobs`` body (a text request's fields only where set)."""
        body: dict[str, Any] = {
            "class_label": self.class_label,
            "num_images": self.num_images,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
        }
        extra: dict[str, Any] = {"prompt": self.prompt, "negative_prompt": self.negative_prompt}
        extra |= {"width": self.width, "height": self.height}
        return body | {k: v for k, v in extra.items() if v is not None}


def uniform_jobs(n: int, sampler: str, steps: int, guidance_scale: float, seed: int) -> list[Request]:
    """``n`` one-image jobs of one sampler and step count; labels cycle through the digits."""
    return [Request(sampler, steps, i % 10, guidance_scale, seed + i) for i in range(n)]


def job_mix(n: int, seed: int, guidance_scale: float = 1.5) -> list[Request]:
    """``n`` one-image jobs with samplers drawn uniformly and steps uniformly in ``MIX_STEPS``."""
    rng = random.Random(seed)
    return [
        Request(
            sampler=rng.choice(MIX_SAMPLERS),
            steps=rng.randint(*MIX_STEPS),
            class_label=rng.randrange(10),
            guidance_scale=guidance_scale,
            seed=rng.randrange(2**40),
        )
        for _ in range(n)
    ]


def text_mix(
    n: int,
    seed: int,
    sizes: Sequence[tuple[int, int] | None] = (None,),
    samplers: Sequence[str] = MIX_SAMPLERS,
) -> list[Request]:
    """``n`` guided text-to-image jobs: a prompt drawn from ``TEXT_PROMPTS`` (so some repeat),
    a negative prompt for about one in three (the rest use the empty one), 1-2 images, steps
    uniform in ``TEXT_STEPS``, the sampler uniform in ``samplers``, the size uniform in
    ``sizes`` (``None``: the model's native size)."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        size = rng.choice(list(sizes))
        jobs.append(
            Request(
                sampler=rng.choice(list(samplers)),
                steps=rng.randint(*TEXT_STEPS),
                class_label=None,
                guidance_scale=TEXT_GUIDANCE,
                seed=rng.randrange(2**40),
                num_images=rng.randint(*TEXT_IMAGES),
                prompt=rng.choice(TEXT_PROMPTS),
                negative_prompt=rng.choice(NEGATIVE_PROMPTS) if rng.random() < 1 / 3 else None,
                width=None if size is None else size[0],
                height=None if size is None else size[1],
            )
        )
    return jobs


def unique_prompt_jobs(n: int, sampler: str, steps: int, guidance_scale: float, seed: int) -> list[Request]:
    """``n`` one-image text-to-image jobs of one sampler and step count, each with a prompt of
    its own (a ``TEXT_PROMPTS`` one and the job's number), so none is in a worker's embedding
    cache: every job costs a text encoding."""
    return [
        Request(
            sampler,
            steps,
            None,
            guidance_scale,
            seed + i,
            prompt=f"{TEXT_PROMPTS[i % len(TEXT_PROMPTS)]} {i}",
        )
        for i in range(n)
    ]


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Offsets in seconds from the start of ``n`` open-loop arrivals of a Poisson process:
    exponential gaps with mean ``1 / rate``, the first arrival after one gap."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out
