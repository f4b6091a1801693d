"""The pipeline's tokenizer as one ``tokenizers`` JSON file, proven to give the same ids.

Workers load it with the Rust ``tokenizers`` library alone (no transformers). Padding to
``model_max_length`` with the pipeline's pad id and truncation there are saved in the file, so
``Tokenizer.from_file(f).encode(prompt).ids`` is already what diffusers feeds its text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tooling.importer.errors import ImportRefused

# Prompts the converted tokenizer must reproduce exactly: plain, empty, past the length limit,
# non-ASCII, punctuation and odd whitespace, case.
CHECK_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "",
    " ".join(["a very long prompt about a red cat in a blue city at night"] * 12),
    "Ünïcödé café ✨ 日本語の猫 😀 naïve façade",
    "punctuation!!! ... ,,, ??? (masterpiece:1.2) [blue] {red} a-b_c/d\\e @#$%^&*",
    "  multiple   spaces\tand\nnew lines  ",
    "UPPER lower MiXeD 1234567890 it's don't we'll",
)


@dataclass(frozen=True)
class TokenizerInfo:
    model_max_length: int
    pad_token_id: int
    prompts_checked: int


def convert_tokenizer(folder: Path, cls: str, dest: Path) -> TokenizerInfo:
    """Write ``dest`` (tokenizer.json) from the pipeline's ``tokenizer/`` folder and check it
    against the transformers tokenizer diffusers would load (class ``cls``)."""
    import transformers
    from tokenizers import Tokenizer

    try:
        reference = getattr(transformers, cls).from_pretrained(folder)
        fast = transformers.AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as e:  # a broken or incomplete folder: name it
        raise ImportRefused("tokenizer", f"cannot load {folder}: {e}") from e
    length = int(reference.model_max_length)
    if not 2 <= length <= 4096:
        raise ImportRefused("tokenizer.model_max_length", f"{length} is not a usable sequence length")
    pad_id = reference.pad_token_id
    if pad_id is None:
        raise ImportRefused("tokenizer.pad_token", "the tokenizer has no pad token, so cannot pad")
    backend = fast.backend_tokenizer
    backend.enable_truncation(max_length=length)
    backend.enable_padding(length=length, pad_id=int(pad_id), pad_token=str(reference.pad_token))
    backend.save(str(dest))

    def want(prompt: str) -> list[int]:
        return list(reference(prompt, padding="max_length", max_length=length, truncation=True).input_ids)

    saved = Tokenizer.from_file(str(dest))
    explicit = Tokenizer.from_file(str(dest))  # as a worker that sets padding itself would
    explicit.no_padding()
    explicit.no_truncation()
    explicit.enable_truncation(max_length=length)
    explicit.enable_padding(length=length, pad_id=int(pad_id))
    for prompt in CHECK_PROMPTS:
        expected = want(prompt)
        for how, tok in (("as saved", saved), ("with padding set", explicit)):
            got = tok.encode(prompt).ids
            if got != expected:
                raise ImportRefused(
                    "tokenizer",
                    f"tokenizer.json ({how}) gives {got} for {prompt!r}, {cls} gives {expected}",
                )
    return TokenizerInfo(length, int(pad_id), len(CHECK_PROMPTS))
