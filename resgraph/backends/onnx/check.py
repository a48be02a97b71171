"""Validity of an emitted model: the ONNX checker (full), strict shape inference, and the IR's shapes.

Every tensor named after an IR path must get, from ONNX's own shape inference, exactly the IR's
shape behind the symbolic batch dimension.
"""
from __future__ import annotations

import onnx

from ...ir import Graph


def inferred_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = dims
    return out


def skeleton(model: onnx.ModelProto, streamed: dict | None = None) -> onnx.ModelProto:
    """The model with its weights declared as typed, shaped graph inputs instead of initializers:
    the same nodes and the same shapes for the checker and shape inference, without copying
    hundreds of megabytes of weights through them. `streamed`: weights kept out of the model
    (name -> array, from lower.build), declared the same way."""
    from onnx import helper
    g = model.graph
    big = [t for t in g.initializer if _size(t) > 64]          # weights; small constants (scales, pads) stay
    small = [t for t in g.initializer if _size(t) <= 64]       # data: shape inference needs their values
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big]
    weights += [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                for name, a in (streamed or {}).items()]
    sg = helper.make_graph(list(g.node), g.name, list(g.input) + weights, list(g.output), initializer=small,
                           value_info=list(g.value_info))   # shapes lower.py declares where inference stops
    m = helper.make_model(sg, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                          producer_name=model.producer_name, producer_version=model.producer_version)
    return m


def _size(t) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def validate(model: onnx.ModelProto, graph: Graph, streamed: dict | None = None) -> None:
    """Raise AssertionError (a resgraph bug, never the user's) if the model is invalid or its
    inferred shapes disagree with the IR. Checks the skeleton: weights only matter by type and shape."""
    model = skeleton(model, streamed)
    onnx.checker.check_model(model, full_check=True)
    # symbolic spatial dims (size variables) are checked at the IR's sizes: the same equations
    from onnx import helper
    for vi in model.graph.input:
        path = dict(graph.inputs).get(vi.name)
        if path is not None:
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, ["batch", *graph[path].shape]))
    shapes = inferred_shapes(model)
    names = {n.output[0] for n in model.graph.node}
    renamed = {}
    for name, path in graph.outputs:
        renamed.setdefault(path, name)
    for n in graph.nodes[len(graph.inputs):]:
        name = renamed.get(n.path, n.path)
        if name not in names:
            continue   # folded away, or an alias (identity)
        got = shapes.get(name)
        # ONNX's own inference cannot carry the batch symbol through Resize's float scales (it makes a
        # fresh unk__ symbol): the batch must stay symbolic, every other dimension equal the IR's
        assert got is not None and got[1:] == list(n.shape) and isinstance(got[0], str) and \
            (got[0] == "batch" or got[0].startswith("unk__")), f"{name}: ONNX infers {got}, the IR says [batch, {n.shape}]"
