"""Output sizes: parsing ``WxH`` lists and checking them against a latent model's geometry."""

from __future__ import annotations

from collections.abc import Iterable

from tooling.importer.errors import ImportRefused

Size = tuple[int, int]  # (width, height) in pixels
MAX_SIDE = 4096  # as model_store.manifest.SizeSpec


def check_bounds(sizes: Iterable[Size]) -> None:
    """Refuse a side outside 1..MAX_SIDE before any work is done, naming ``sizes``."""
    for w, h in sizes:
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise ImportRefused("sizes", f"{w}x{h}: each side must be within 1..{MAX_SIDE} pixels")


def parse_sizes(text: str) -> list[Size]:
    """``"64x64,96x64"`` -> [(64, 64), (96, 64)] (width x height, as on the CLI)."""
    sizes: list[Size] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        w, sep, h = part.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise ImportRefused("sizes", f"{part!r} is not WIDTHxHEIGHT in pixels")
        sizes.append((int(w), int(h)))
    if not sizes:
        raise ImportRefused("sizes", "no size given")
    return list(dict.fromkeys(sizes))


def check_sizes(
    sizes: Iterable[Size],
    *,
    factor: int,
    latent_multiple: int,
    denoiser: str,
    fixed_latent: Size | None = None,
) -> list[Size]:
    """Refuse a size the model cannot serve exactly, naming ``sizes``.

    Every size must be a multiple of the VAE ``factor``, and its latent a multiple of
    ``latent_multiple`` (the denoiser's total downsampling, or its patch size): a UNet would
    otherwise resample its skip connections to a size it was never exported at. A denoiser
    whose graph fixes the latent (``fixed_latent``, (w, h) in latent cells) serves that only.
    """
    checked = []
    for w, h in sizes:
        if w % factor or h % factor:
            raise ImportRefused(
                "sizes", f"{w}x{h} is not a multiple of the VAE factor {factor} (pixels per latent cell)"
            )
        lw, lh = w // factor, h // factor
        if lw % latent_multiple or lh % latent_multiple:
            raise ImportRefused(
                "sizes",
                f"{w}x{h} gives a {lw}x{lh} latent, which {denoiser} cannot take: it needs multiples "
                f"of {latent_multiple} (image multiples of {factor * latent_multiple})",
            )
        if fixed_latent is not None and (lw, lh) != fixed_latent:
            fw, fh = fixed_latent
            raise ImportRefused(
                "sizes",
                f"{w}x{h}: {denoiser} serves only its native {fw * factor}x{fh * factor} "
                f"(its graph fixes the {fw}x{fh} latent)",
            )
        checked.append((w, h))
    return checked
