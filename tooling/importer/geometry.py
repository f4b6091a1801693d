"""A pipeline's latent geometry from its component configs, refusing what cannot be served.

Pure dictionaries in, numbers out (no torch): the VAE factor and scaling, the denoiser's
native latent and the multiple its latent sizes need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tooling.importer.errors import ImportRefused
from tooling.importer.sizes import Size

# UNet features whose extra inputs (SDXL's added time ids, class embeddings, LCM's guidance
# embedding, image projections) the served graph does not take: refused, named.
UNET_UNSERVED = (
    "addition_embed_type",
    "class_embed_type",
    "time_cond_proj_dim",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
)


@dataclass(frozen=True)
class Geometry:
    """Where the denoiser works and how big the images are."""

    latent_channels: int
    factor: int  # pixels per latent cell
    scaling_factor: float
    native_latent: Size  # (width, height) in latent cells
    latent_multiple: int  # latent sizes must be multiples of this
    fixed_latent: bool  # the denoiser's graph serves its native latent only
    learned_sigma: bool = False

    @property
    def native(self) -> Size:
        """The native image, (width, height) in pixels."""
        w, h = self.native_latent
        return (w * self.factor, h * self.factor)


def _sample_size(value: Any, field: str) -> Size:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return (int(value[1]), int(value[0]))  # diffusers writes (height, width)
    raise ImportRefused(field, f"{value!r} is not a latent size")


def vae_factor(vae: dict[str, Any]) -> int:
    """Pixels per latent cell: one 2x downsampling per VAE block but the last."""
    blocks = vae.get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        raise ImportRefused("vae.block_out_channels", f"{blocks!r} is not a list of channels")
    return int(2 ** (len(blocks) - 1))


def _vae(vae: dict[str, Any], in_channels: int, denoiser: str) -> tuple[int, float]:
    latent = vae.get("latent_channels")
    if latent != in_channels:
        raise ImportRefused(
            f"{denoiser}.in_channels",
            f"{in_channels} input channels, but the VAE has {latent} latent channels "
            "(an inpainting or other conditioned model?)",
        )
    for key in ("latents_mean", "latents_std"):
        if vae.get(key) is not None:
            raise ImportRefused(
                f"vae.{key}", "per-channel latent statistics are not applied by this pipeline"
            )
    scaling = vae.get("scaling_factor", 0.18215)
    if not isinstance(scaling, int | float) or scaling <= 0:
        raise ImportRefused("vae.scaling_factor", f"{scaling!r} is not a positive number")
    return int(latent), float(scaling)


def check_text_encoder(text: dict[str, Any]) -> None:
    """Refuse a text encoder diffusers' pipeline feeds an attention mask (``use_attention_mask``):
    the served graph takes the token ids alone, as the pipeline does for CLIP by default."""
    if text.get("use_attention_mask"):
        raise ImportRefused("text_encoder.use_attention_mask", "true: an attention-mask input is not served")


def unet_geometry(unet: dict[str, Any], vae: dict[str, Any], text_hidden: int | None) -> Geometry:
    """A UNet2DConditionModel's geometry; ``text_hidden``: the text encoder's hidden size."""
    for key in UNET_UNSERVED:
        if unet.get(key) is not None:
            raise ImportRefused(f"unet.{key}", f"{unet[key]!r}: its extra inputs are not served")
    c = int(unet.get("in_channels", 4))
    latent, scaling = _vae(vae, c, "unet")
    if unet.get("out_channels", c) != c:
        raise ImportRefused("unet.out_channels", f"{unet.get('out_channels')} differs from in_channels {c}")
    if text_hidden is not None and unet.get("cross_attention_dim") != text_hidden:
        raise ImportRefused(
            "unet.cross_attention_dim",
            f"{unet.get('cross_attention_dim')} differs from the text encoder's hidden size {text_hidden}",
        )
    downs = unet.get("down_block_types") or []
    return Geometry(
        latent_channels=latent,
        factor=vae_factor(vae),
        scaling_factor=scaling,
        native_latent=_sample_size(unet.get("sample_size", 64), "unet.sample_size"),
        # each down block but the last halves the latent; the up path must meet its skips
        latent_multiple=int(2 ** max(len(downs) - 1, 0)),
        fixed_latent=False,
    )


def dit_geometry(transformer: dict[str, Any], vae: dict[str, Any]) -> Geometry:
    """A DiT transformer's geometry. diffusers' DiT unpatchifies a square and fixes its position
    embedding when traced, so the exported graph serves the native latent only."""
    norm = transformer.get("norm_type", "ada_norm_zero")
    if norm != "ada_norm_zero":
        raise ImportRefused("transformer.norm_type", f"{norm!r}: only DiT's class-conditional ada_norm_zero")
    patch = transformer.get("patch_size")
    if not isinstance(patch, int) or patch < 1:
        raise ImportRefused("transformer.patch_size", f"{patch!r}: a DiT needs a patch size")
    if not isinstance(transformer.get("num_embeds_ada_norm"), int):
        raise ImportRefused("transformer.num_embeds_ada_norm", "a DiT needs its number of classes")
    c = int(transformer.get("in_channels", 4))
    out = transformer.get("out_channels") or c
    if out not in (c, 2 * c):
        raise ImportRefused("transformer.out_channels", f"{out}: expected {c} or {2 * c} (learned sigma)")
    latent, scaling = _vae(vae, c, "transformer")
    native = _sample_size(transformer.get("sample_size", 32), "transformer.sample_size")
    if native[0] != native[1]:
        raise ImportRefused("transformer.sample_size", f"{native}: diffusers' DiT is square only")
    return Geometry(
        latent_channels=latent,
        factor=vae_factor(vae),
        scaling_factor=scaling,
        native_latent=native,
        latent_multiple=patch,
        fixed_latent=True,
        learned_sigma=out == 2 * c,
    )
