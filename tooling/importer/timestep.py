"""A UNet graph exported with one timestep for the whole batch, rewritten to take one per row.

Optimum exports the UNet's ``timestep`` as a scalar: its graph begins
``Unsqueeze(timestep, [0]) -> Expand(batch)``. Replacing that Unsqueeze by
``Reshape(timestep, [-1])`` lets a ``[batch]`` timestep flow through the same Expand
unchanged, so one call can mix rows at different steps, as continuous batching needs. The
importer then checks that each row of the rewritten graph gives what the original gives for
that row alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def per_row_timestep(model: onnx.ModelProto, name: str, batch_dim: str) -> bool:
    """Rewrite ``model`` in place so its rank-0 input ``name`` becomes ``[batch_dim]``; False
    (the model untouched) when the graph does not begin with ``Unsqueeze(name, [0])``."""
    inputs = [v for v in model.graph.input if v.name == name]
    consumers = [n for n in model.graph.node if name in n.input]
    if len(inputs) != 1 or inputs[0].type.tensor_type.shape.dim or len(consumers) != 1:
        return False
    node = consumers[0]
    if node.op_type != "Unsqueeze" or list(node.input).index(name) != 0:
        return False
    if len(node.input) > 1:
        axes = _constant(model, node.input[1])
    else:  # opset < 13: axes is an attribute
        axes = next((np.array(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None or axes.reshape(-1).tolist() != [0]:
        return False
    shape_name = f"{name}__per_row_shape"
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape_name))
    reshape = helper.make_node("Reshape", [name, shape_name], list(node.output), name=f"{node.name}__per_row")
    index = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(index, reshape)
    inputs[0].type.tensor_type.shape.dim.add().dim_param = batch_dim
    return True
