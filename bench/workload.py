"""What the benchmarks ask for: generation requests and when they arrive. Pure and seeded."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from diffq.jobs import JobRequest

MIX_SAMPLERS = ("dpmpp_2m", "ddim", "euler_ancestral", "ddpm")
MIX_STEPS = (4, 50)  # inclusive; DDPM is held to the same bound as the others


@dataclass(frozen=True)
class Request:
    """One job as the benchmarks submit it (over HTTP) or replay it (in-process)."""

    sampler: str
    steps: int
    class_label: int | None
    guidance_scale: float
    seed: int
    num_images: int = 1

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
            model, self.class_label, self.num_images, self.steps, self.sampler, self.guidance_scale, self.seed
        )

    def body(self) -> dict[str, Any]:
        """The ``POST /v1/jobs`` body."""
        return {
            "class_label": self.class_label,
            "num_images": self.num_images,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
        }


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
