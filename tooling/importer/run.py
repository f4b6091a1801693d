"""``import_pipeline``: a diffusers pipeline folder in, a verified model-store entry out."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from model_store.manifest import (
    MANIFEST_NAME,
    ImageSpec,
    LatentSpec,
    Manifest,
    SamplingSpec,
    ScheduleSpec,
    SizeSpec,
    sha256_file,
)
from model_store.store import DEFAULT_ROOT
from tooling.importer.errors import ImportRefused
from tooling.importer.layout import PipelineLayout, read_config, read_layout
from tooling.importer.onnx_files import OPSET
from tooling.importer.parts import Parts
from tooling.importer.schedule import sampling_spec, schedule_spec
from tooling.importer.sizes import Size, check_bounds
from tooling.importer.store_entry import check_ref, staged_entry

if TYPE_CHECKING:
    from tooling.importer.checks import Check

# diffusers' own defaults for these pipelines' guidance_scale.
DEFAULT_GUIDANCE = {"text-to-image": 7.5, "class-conditional": 4.0}


@dataclass(frozen=True)
class ImportOptions:
    """How to import: extra sizes (width, height) beyond the native one, request defaults, and
    the ONNX-vs-torch tolerance (relative to the largest torch output value)."""

    sizes: list[Size] = field(default_factory=list)
    default_steps: int = 25
    default_sampler: str | None = None
    guidance_scale: float | None = None
    max_guidance_scale: float = 20.0
    tolerance: float = 1e-3
    drop_safety_checker: bool = False
    overwrite: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ImportResult:
    directory: Path
    manifest: Manifest
    checks: dict[str, Check]
    files: list[Path]


def import_pipeline(
    src: Path,
    name: str,
    version: str = "1",
    store: Path = DEFAULT_ROOT,
    options: ImportOptions | None = None,
) -> ImportResult:
    """Import the pipeline folder ``src`` as ``store/name/version``.

    Raises ImportRefused naming the field of anything that cannot be served exactly; whatever
    fails, no entry (and no partial folder) is left in the store.
    """
    opts = options or ImportOptions()
    check_ref(name, version)
    check_bounds(opts.sizes)
    layout = read_layout(src, drop_safety_checker=opts.drop_safety_checker)
    schedule = schedule_spec(read_config(src, "scheduler", "scheduler_config.json"))
    guidance = DEFAULT_GUIDANCE[layout.kind] if opts.guidance_scale is None else opts.guidance_scale
    sampling = sampling_spec(
        schedule,
        default_steps=opts.default_steps,
        default_sampler=opts.default_sampler,
        guidance_scale=guidance,
        max_guidance_scale=opts.max_guidance_scale,
    )
    with staged_entry(store, name, version, overwrite=opts.overwrite) as staging:
        parts = _build(layout, staging, opts, schedule.num_train_timesteps)
        manifest = _manifest(name, version, layout, parts, schedule, sampling)
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
    directory = store / name / version
    files = [directory / p.name for p in [*parts.files, staging / MANIFEST_NAME]]
    return ImportResult(directory, manifest, parts.checks, files)


def _build(layout: PipelineLayout, staging: Path, opts: ImportOptions, num_train_timesteps: int) -> Parts:
    if layout.layout == "optimum":
        from tooling.importer import from_optimum

        return from_optimum.build(layout, staging, sizes=opts.sizes, num_train_timesteps=num_train_timesteps)
    from tooling.importer import from_diffusers

    return from_diffusers.build(
        layout,
        staging,
        sizes=opts.sizes,
        num_train_timesteps=num_train_timesteps,
        tolerance=opts.tolerance,
        seed=opts.seed,
    )


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("diffusers", "transformers", "tokenizers", "torch", "onnx", "onnxruntime"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def _manifest(
    name: str,
    version: str,
    layout: PipelineLayout,
    parts: Parts,
    schedule: ScheduleSpec,
    sampling: SamplingSpec,
) -> Manifest:
    g = parts.geometry
    width, height = g.native
    den = parts.denoiser
    source: dict[str, object] = {
        "pipeline": layout.pipeline_class,
        "layout": layout.layout,
        "folder": layout.root.name,
        "diffusers_version": layout.index.get("_diffusers_version"),
        "components": {k: list(v) for k, v in sorted(layout.components.items())},
        "not_served": layout.dropped,
        "imported_with": _versions(),
        **parts.source,
    }
    # The manifest's sha256 covers each .onnx file; weights kept outside one are listed here.
    external_data = {
        p.name: sha256_file(p)
        for f in (den, parts.text_encoder, parts.vae_decoder)
        if f is not None
        for p in f.extra_files
    }
    quality = {"onnx_vs_torch": {k: v.as_dict() for k, v in parts.checks.items()}}
    if len(den.inputs) != 3 or len(den.outputs) != 1:
        raise ImportRefused(
            layout.denoiser,
            f"the denoiser graph has inputs {[i['name'] for i in den.inputs]} and outputs "
            f"{[o['name'] for o in den.outputs]}; (sample, timestep, condition) -> one output is served",
        )
    try:
        return Manifest(
            name=name,
            version=version,
            file=den.path.name,
            sha256=den.sha256,
            opset=OPSET,
            inputs=den.inputs,
            outputs=den.outputs,
            image=ImageSpec(channels=3, height=height, width=width),
            kind=layout.kind,
            classes=parts.classes,
            null_class=len(parts.classes) if layout.kind == "class-conditional" else None,
            sizes=[SizeSpec(width=w, height=h) for w, h in parts.sizes],
            # Neither pipeline applies the VAE's shift_factor when decoding (SD 3 does): 0 here.
            latent=LatentSpec(channels=g.latent_channels, factor=g.factor, scaling_factor=g.scaling_factor),
            vae_decoder=parts.vae_decoder.component_spec(),
            text_encoder=parts.text_encoder.component_spec() if parts.text_encoder else None,
            tokenizer=parts.tokenizer,
            source=source,
            external_data=external_data,
            schedule=schedule,
            sampling=sampling,
            architecture=parts.architecture,
            quality=quality,
        )
    except ValueError as e:  # pydantic's ValidationError: the contract the importer must meet
        raise ImportRefused("manifest", f"the entry would not validate: {e}") from e
