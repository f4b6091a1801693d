"""Export the fp16 variant of a stored model beside its fp32 file and list it in the manifest.

The fp32 graph is converted op by op (onnxruntime's float16 converter) with its inputs and
outputs kept float32: the graph casts at its edges, so workers and samplers run the variant
exactly as they run the base file. The conversion is checked against the fp32 file on random
batches (fractional timesteps, every class and the null class) and refused above
``MAX_RELATIVE_ERROR``.

    python -m tooling.training.half [--model mnist-cfg-unet] [--version 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16

from model_store.manifest import MANIFEST_NAME, Manifest, VariantSpec, sha256_file
from model_store.store import ModelStore, StoredModel

VARIANT = "fp16"
MAX_RELATIVE_ERROR = 5e-3  # fp16 has an 11-bit significand: ~1e-3 is what a faithful conversion gives


def convert(src: Path, dst: Path) -> None:
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _sort_nodes(model.graph)  # the converter appends the input casts at the end
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so every node comes after the nodes that produce its inputs, keeping
    the original order otherwise (a stable topological sort)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def max_relative_error(manifest: Manifest, base: Path, variant: Path, seed: int = 0) -> float:
    """max |variant - base| / max |base| over random batches of sizes 1, 3 and 16 (CPU)."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (base, variant)]
    names = [s.name for s in manifest.inputs]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in (1, 3, 16):
        feeds = dict(
            zip(
                names,
                (
                    rng.standard_normal((b, *manifest.image_shape)).astype(np.float32),
                    (rng.random(b) * (manifest.schedule.num_train_timesteps - 1)).astype(np.float32),
                    rng.integers(0, manifest.unconditional_class + 1, b).astype(np.int64),
                ),
                strict=True,
            )
        )
        want, got = (np.asarray(s.run(None, feeds)[0]) for s in sessions)
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return worst


def export_fp16(stored: StoredModel) -> VariantSpec:
    """Write ``model.fp16.onnx`` beside the base file and its entry into the manifest."""
    base = stored.verify()
    dst = stored.directory / f"{base.stem}.{VARIANT}.onnx"
    convert(base, dst)
    err = max_relative_error(stored.manifest, base, dst)
    if err > MAX_RELATIVE_ERROR:
        dst.unlink()
        raise SystemExit(f"fp16 variant disagrees with fp32: max relative error {err:.2e}")
    spec = VariantSpec(
        file=dst.name, sha256=sha256_file(dst), compute_dtype="float16", max_relative_error=round(err, 6)
    )
    path = stored.directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    previous = data.get("variants", {}).get(VARIANT, {})
    if previous.get("sha256") == spec.sha256:  # same bytes: keep its measured quality
        spec = spec.model_copy(update={"quality": previous.get("quality", {})})
    data.setdefault("variants", {})[VARIANT] = spec.model_dump()
    Manifest.model_validate(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return spec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-cfg-unet")
    p.add_argument("--version", default=None, help="default: the newest")
    p.add_argument("--store", type=Path, default=None, help="model store root; default the shipped one")
    a = p.parse_args(argv)
    stored = (ModelStore(a.store) if a.store else ModelStore()).get(a.model, a.version)
    spec = export_fp16(stored)
    print(
        f"wrote {stored.directory / spec.file} (sha256 {spec.sha256[:12]}...), "
        f"max relative error vs fp32 {spec.max_relative_error:.2e}"
    )


if __name__ == "__main__":
    main()
