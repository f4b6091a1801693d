"""A model's first and last stages around the denoiser: prompts to hidden states, latents to pixels.

The denoiser (``workers.engine.Engine``) is the middle stage. A text-to-image model encodes
each job's prompt and negative prompt once, when the job joins the batch (one text-encoder
call for every job joining at a step); a latent model decodes its latents with the VAE
decoder once the images are done (one call for the images that finish together). A
pixel-space model (the shipped MNIST model) has neither stage: its conditions are class labels
and its samples are the pixels.

Workers tokenize with the ``tokenizers`` library from the ``tokenizer.json`` the importer
wrote, exactly as diffusers' pipelines call their tokenizer: padded to ``model_max_length``
and truncated there, special tokens included.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from diffq.jobs import JobRequest
from model_store.manifest import LatentSpec, Manifest, TokenizerSpec
from sampling.denoise import to_uint8
from workers.engine import Component

# Prompts whose hidden states a worker keeps: the empty negative prompt of every unguided or
# default-negative job, and prompts that repeat (a client retrying, a batch of variations).
EMBEDDING_CACHE = 256
# The stages around the denoiser, by the names their metrics and components go by.
TEXT_ENCODER, VAE_DECODER = "text_encoder", "vae_decoder"


class PromptError(ValueError):
    """A prompt the tokenizer cannot take (the job's fault, not the model's)."""


def sample_shape(request: JobRequest, manifest: Manifest) -> tuple[int, int, int]:
    """The denoiser's sample shape for a job, after checking the job fits the model: the kind
    of condition (a prompt for a text model, at most a class for a class model) and a served
    size (both sides or neither). The gateway checks the same; a job can also reach the queue
    past it (an older gateway, a hand-written entry). ValueError says what does not fit."""
    m = manifest
    if m.kind == "text-to-image":
        if request.prompt is None:
            raise ValueError(f"{m.ref} is a text-to-image model: the job needs a prompt")
        if request.class_label is not None:
            raise ValueError(f"{m.ref} is a text-to-image model: it takes no class_label")
    elif request.prompt is not None or request.negative_prompt is not None:
        raise ValueError(f"{m.ref} is a class-conditional model: it takes no prompt or negative_prompt")
    if (request.width is None) != (request.height is None):
        raise ValueError("width and height go together")
    size = (request.width or m.image.width, request.height or m.image.height)
    if size not in m.served_sizes:
        raise ValueError(f"{m.ref} does not serve {size[0]}x{size[1]}; sizes: {m.served_sizes}")
    return m.sample_shape(*size)


def load_tokenizer(path: Path, spec: TokenizerSpec) -> Tokenizer:
    """The pipeline's tokenizer, padding and truncating to ``model_max_length``."""
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=spec.model_max_length)
    tok.enable_padding(length=spec.model_max_length, pad_id=spec.pad_token_id)
    return tok


def token_ids(tokenizer: Tokenizer, prompts: Sequence[str]) -> np.ndarray:
    """int64 [n, model_max_length] ids, as the pipeline's own tokenizer gives them;
    PromptError naming the first prompt it cannot take (e.g. a lone surrogate)."""
    try:
        encoded = tokenizer.encode_batch(list(prompts))
    except Exception:
        for i, prompt in enumerate(prompts):
            try:
                tokenizer.encode(prompt)
            except Exception as e:
                raise PromptError(f"prompt {i} cannot be tokenized: {type(e).__name__}") from e
        raise
    return np.array([e.ids for e in encoded], dtype=np.int64)


class TextEncoder:
    """Prompts to the text encoder's hidden states ([seq, dim] per prompt), cached by prompt."""

    def __init__(self, tokenizer: Tokenizer, component: Component, cache_size: int = EMBEDDING_CACHE) -> None:
        self.tokenizer = tokenizer
        self.component = component
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, prompts: Sequence[str]) -> list[np.ndarray]:
        """Hidden states per prompt, in order; one encoder call for the prompts not cached."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            states = self.component.run(token_ids(self.tokenizer, missing)).astype(np.float32)
            for prompt, state in zip(missing, states, strict=True):
                state.setflags(write=False)
                self._cache[prompt] = state
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out


class Decoder:
    """Final samples to 8-bit pixels ([H, W] or [H, W, C]): through the VAE decoder for a latent
    model, directly for a pixel-space one. Samples of one shape share one decoder call."""

    def __init__(self, latent: LatentSpec | None = None, component: Component | None = None) -> None:
        if (latent is None) != (component is None):
            raise ValueError("a latent decoder needs both the latent spec and the VAE decoder")
        self.latent = latent
        self.component = component

    def pixels(self, samples: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.component is None or self.latent is None:
            return [to_uint8(x) for x in samples]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(samples):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(samples)
        for idx in groups.values():
            z = np.stack([samples[i] for i in idx]).astype(np.float32)
            images = self.component.run(z / self.latent.scaling_factor + self.latent.shift_factor)
            for i, image in zip(idx, images, strict=True):
                out[i] = to_uint8(image)
        return out
