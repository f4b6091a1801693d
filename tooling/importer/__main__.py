"""``python -m tooling.importer SRC --name NAME``: import a diffusers pipeline into the model store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_store.store import DEFAULT_ROOT
from tooling.importer.errors import ImportRefused
from tooling.importer.run import ImportOptions, import_pipeline
from tooling.importer.sizes import parse_sizes


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, import, print what was written (exit 2 on a refusal)."""
    p = argparse.ArgumentParser(prog="python -m tooling.importer", description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="a save_pretrained folder (model_index.json at its root)")
    p.add_argument("--name", required=True, help="model name in the store")
    p.add_argument("--version", default="1")
    p.add_argument("--store", type=Path, default=DEFAULT_ROOT, help=f"store root (default {DEFAULT_ROOT})")
    p.add_argument(
        "--sizes", default="", help="extra output sizes WxH,WxH (the native size is always served)"
    )
    p.add_argument("--default-steps", type=int, default=25)
    p.add_argument("--default-sampler", default=None, help="default: dpmpp_2m")
    p.add_argument("--guidance-scale", type=float, default=None, help="default: 7.5 (SD), 4.0 (DiT)")
    p.add_argument("--max-guidance-scale", type=float, default=20.0)
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative ONNX-vs-torch error")
    p.add_argument("--drop-safety-checker", action="store_true", help="serve without the safety checker")
    p.add_argument("--overwrite", action="store_true", help="replace an existing NAME/VERSION")
    a = p.parse_args(argv)
    options = ImportOptions(
        sizes=parse_sizes(a.sizes) if a.sizes.strip() else [],
        default_steps=a.default_steps,
        default_sampler=a.default_sampler,
        guidance_scale=a.guidance_scale,
        max_guidance_scale=a.max_guidance_scale,
        tolerance=a.tolerance,
        drop_safety_checker=a.drop_safety_checker,
        overwrite=a.overwrite,
    )
    try:
        result = import_pipeline(a.src, a.name, a.version, a.store, options)
    except ImportRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        sys.exit(2)
    m = result.manifest
    sizes = ", ".join(f"{w}x{h}" for w, h in m.served_sizes)
    print(f"wrote {result.directory} ({m.kind}, {m.source.get('pipeline')}; sizes {sizes})")
    for path in result.files:
        print(f"  {path.name:<24} {path.stat().st_size / 1e6:9.2f} MB")
    for component, check in result.checks.items():
        if check.max_relative_error is None:
            print(f"  {component}: ran {len(check.cases)} cases in onnxruntime (no torch weights to compare)")
        else:
            print(
                f"  {component}: max error vs torch {check.max_abs_error:.2e} "
                f"(relative {check.max_relative_error:.2e}) over {len(check.cases)} cases"
            )


if __name__ == "__main__":
    main()
