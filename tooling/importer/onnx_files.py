"""ONNX files as the store holds them: flat, one per component, I/O read back into TensorSpecs.

Used for both our own exports and Optimum's: the manifest's I/O is always what the file says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from tooling.importer.errors import ImportRefused

OPSET = 17  # the store's minimum (Manifest.opset); our exports use it
DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT64: "int64",
}
# Protobuf refuses messages over 2 GiB; weights beyond this go to one external data file.
INLINE_LIMIT = 1_800_000_000


def value_spec(value: onnx.ValueInfoProto, component: str) -> dict[str, Any]:
    """A graph input or output as a manifest TensorSpec (dynamic axes by their names)."""
    t = value.type.tensor_type
    if t.elem_type not in DTYPES:
        raise ImportRefused(
            f"{component}.{value.name}",
            f"dtype {TensorProto.DataType.Name(t.elem_type)} is not one of {sorted(DTYPES.values())}",
        )
    shape: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or f"{value.name}_{i}")
    return {"name": value.name, "dtype": DTYPES[t.elem_type], "shape": shape}


def io_specs(model: onnx.ModelProto, component: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) TensorSpecs of a graph, in its order; initializers are not inputs."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [value_spec(v, component) for v in model.graph.input if v.name not in weights]
    outputs = [value_spec(v, component) for v in model.graph.output]
    return inputs, outputs


def check_dynamic_batch(specs: list[dict[str, Any]], component: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse a tensor whose first axis is a fixed number: batches of any size must run."""
    for spec in specs:
        if spec["name"] in skip or not spec["shape"]:
            continue
        first = spec["shape"][0]
        if isinstance(first, int):
            raise ImportRefused(
                f"{component}.{spec['name']}",
                f"fixed batch axis {first} (shape {spec['shape']}); export it with a dynamic batch axis",
            )


def widen_int32_inputs(model: onnx.ModelProto) -> list[str]:
    """Make int32 graph inputs int64 with a Cast at the edge (manifests speak int64 for ids);
    returns the inputs changed. Values fit: token ids and class labels are small."""
    changed = []
    for value in model.graph.input:
        t = value.type.tensor_type
        if t.elem_type != TensorProto.INT32:
            continue
        inner = f"{value.name}__int32"
        for node in model.graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        t.elem_type = TensorProto.INT64
        model.graph.node.insert(0, helper.make_node("Cast", [value.name], [inner], to=TensorProto.INT32))
        changed.append(value.name)
    return changed


def save_flat(model: onnx.ModelProto, dest: Path) -> list[Path]:
    """Write ``dest`` (and ``dest.data`` for weights past protobuf's limit); the files written."""
    if not _large(model):
        onnx.save_model(model, str(dest))
        return [dest]
    data = dest.with_name(dest.name + ".data")
    onnx.save_model(
        model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name
    )
    return [dest, data]


def load_full(path: Path) -> onnx.ModelProto:
    """A model with its external weights (if any) loaded, checked by onnx's checker."""
    model = onnx.load(str(path), load_external_data=True)
    onnx.checker.check_model(str(path) if _large(model) else model)
    return model


def _large(model: onnx.ModelProto) -> bool:
    # Summed per initializer: ByteSize() of the whole message fails past 2 GiB.
    return sum(init.ByteSize() for init in model.graph.initializer) >= INLINE_LIMIT
