"""An ONNX model as the same flat list of resgraph ops that trace.py makes of a torch model.

Each ONNX node becomes one Op (key: its first output's name; inputs: the ops that produce the tensors
it reads, initializers left out), and its initializers become that op's tensors in torch's layout
(`weight`, `bias`, `running_mean`, `running_var`). The node's name is its module path where it looks
like one (resgraph's own model.onnx names each node by its IR path: `layer1.0.conv1`); torch's
exporter names (`/layer1/layer1.0/conv1/Conv`) are read as the path they spell; other names are
replaced by the op and a count. Every node resgraph has no op for is listed at once.
"""
from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

from ...errors import Diagnostic, Loc, WeightsError
from .trace import Op, _drop_identities, _nondefault, _padding

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_PLAIN = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Mul": "mul",
          "GlobalAveragePool": "global_avgpool", "Identity": "identity", "Dropout": "identity"}
_HINT = "resgraph has no op for it; see docs/spec-language.md section 3.13; nothing was written"


def read(path: str):
    """The model with its external data loaded; a clean error naming a missing model or data file."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    if not os.path.isfile(path):
        raise WeightsError.at(path, "no such ONNX file", "give the path of a .onnx file")
    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    for t in model.graph.initializer:
        if uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if not os.path.isfile(os.path.join(folder, loc)):
                raise WeightsError.at(path, f"the external data file '{loc}' (tensor '{t.name}') is missing",
                                      "put it next to the .onnx file, as it was written; nothing was written")
    onnx.load_external_data_for_model(model, folder)
    return model


def trace_onnx(model, where: str) -> tuple[list[Op], str, dict, tuple]:
    """(ops in graph order, the input's key, op key -> {torch name: array}, the input's C,H,W)."""
    from onnx import numpy_helper
    g = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 1:
        raise WeightsError.at(where, f"the model takes {len(inputs)} inputs; resgraph import reads one image input",
                              "export the model with one input; nothing was written")
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim[1:])
    ops, tensors, bad, paths = [], {}, [], Counter()
    for n in g.node:
        if n.op_type == "Constant":
            continue
        got = _map(n, init)
        path = _path(n.name, n.op_type, paths)
        if isinstance(got, str):
            bad.append(Diagnostic(Loc(where, 0, 0), f"unsupported node '{n.name or n.output[0]}': {got}", _HINT))
            continue
        op, args, ts = got
        ins = [i for i in n.input if i and i not in init]
        ops.append(Op(n.output[0], op, args, ins, path))
        tensors[n.output[0]] = ts
    if bad:
        raise WeightsError(bad, ordered=True)
    return _merge_bias(_drop_identities(ops), tensors, where), inputs[0].name, tensors, shape


def _path(name: str, op_type: str, seen: Counter) -> str:
    """The node's module path: its name where it is one, torch's exporter scopes read as one, else made."""
    if name.startswith("/"):
        path = ""
        for seg in name.strip("/").split("/")[:-1]:
            path = seg if not path or seg.startswith(path + ".") else f"{path}.{seg}"
        name = path
    if not _PATH.fullmatch(name or "-"):
        seen[op_type] += 1
        name = f"{op_type.lower()}{seen[op_type]}"
    return name


def _attrs(n) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _map(n, init: dict):
    """(op, args, tensors) for a node, or a string saying what it is when resgraph has no op for it."""
    a, t = _attrs(n), n.op_type
    consts = [i for i in n.input[1:] if i in init]
    if t in _PLAIN and not consts:
        return _PLAIN[t], {}, {}
    if t == "LeakyRelu":
        return "leaky_relu", _nondefault({"slope": a.get("alpha", 0.01)}, {"slope": 0.01}), {}
    if t == "Add" and not consts and len(n.input) == 2:
        return "add", {}, {}
    if t == "Add" and len(consts) == 1:
        return "bias", {}, {"bias": init[consts[0]]}
    if t == "Concat" and a.get("axis") == 1 and not consts:
        return "concat", {}, {}
    if t == "Flatten" and a.get("axis", 1) == 1:
        return "flatten", {}, {}
    if t == "Conv":
        return _conv(n, a, init)
    if t == "BatchNormalization" and len(n.output) == 1 and all(i in init for i in n.input[1:]):
        s, b, m, v = (init[i] for i in n.input[1:5])
        args = _nondefault({"eps": a.get("epsilon", 1e-5), "momentum": round(1 - a.get("momentum", 0.9), 6)},
                           {"eps": 1e-5, "momentum": 0.1})
        return "bn", args, {"weight": s, "bias": b, "running_mean": m, "running_var": v}
    if t in ("MaxPool", "AveragePool"):
        return _pool(t, a)
    if t in ("Gemm", "MatMul"):
        return _linear(n, a, init)
    return f"op {t}" + (" (with these attributes or constant inputs)" if t in _KNOWN else "")


_KNOWN = ("Relu", "Sigmoid", "Tanh", "HardSwish", "Mul", "Add", "Concat", "Flatten", "Conv", "BatchNormalization",
          "MaxPool", "AveragePool", "Gemm", "MatMul", "GlobalAveragePool")


def _square2(a: dict, key: str, default: int) -> int | None:
    v = list(a.get(key, [default, default]))
    return v[0] if len(v) == 2 and v[0] == v[1] else None


def _pads(a: dict) -> int | None:
    p = list(a.get("pads", [0, 0, 0, 0]))
    return p[0] if len(p) == 4 and len(set(p)) == 1 else None


def _conv(n, a: dict, init: dict):
    if n.input[1] not in init or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return "op Conv (weights not constant, or auto_pad)"
    w = init[n.input[1]]
    k, s, d, p = _square2(a, "kernel_shape", w.shape[-1]), _square2(a, "strides", 1), _square2(a, "dilations", 1), \
        _pads(a)
    if w.ndim != 4 or None in (k, s, d, p):
        return "op Conv (not 2-d, or a non-square kernel, stride, dilation or padding)"
    ts = {"weight": w, **({"bias": init[n.input[2]]} if len(n.input) > 2 and n.input[2] else {})}
    args = {"out": int(w.shape[0]), "kernel": k, "stride": s, "padding": _padding(p, k, d, "same"), "dilation": d,
            "groups": int(a.get("group", 1)), "bias": "bias" in ts}
    return "conv", _nondefault(args, {"stride": 1, "padding": "same", "dilation": 1, "groups": 1}), ts


def _pool(t: str, a: dict):
    k = _square2(a, "kernel_shape", 0)
    s, p = _square2(a, "strides", k or 1), _pads(a)
    name = "maxpool" if t == "MaxPool" else "avgpool"
    if None in (k, s, p) or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or \
            (name == "maxpool" and _square2(a, "dilations", 1) != 1) or (name == "avgpool" and p and
                                                                        a.get("count_include_pad", 0)):
        return f"op {t} (non-square, dilated, auto-padded or counting padding)"
    args = {"kernel": k, "stride": s, "padding": _padding(p, k, 1, "valid"), "ceil_mode": bool(a.get("ceil_mode", 0))}
    return name, _nondefault(args, {"stride": k, "padding": "valid", "ceil_mode": False}), {}


def _linear(n, a: dict, init: dict):
    if n.input[1] not in init or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        return f"op {n.op_type} (a non-constant weight, transA, alpha or beta)"
    w = init[n.input[1]]
    w = w if a.get("transB", 0) else w.T
    ts = {"weight": np.ascontiguousarray(w)}
    if len(n.input) > 2 and n.input[2]:
        if n.input[2] not in init:
            return "op Gemm (a non-constant bias)"
        ts["bias"] = init[n.input[2]]
    return "linear", {"out": int(w.shape[0]), **({} if "bias" in ts else {"bias": False})}, ts


def _merge_bias(ops: list[Op], tensors: dict, where: str) -> list[Op]:
    """A MatMul and the Add of a constant right after it are one linear with a bias."""
    by_key, users = {o.key: o for o in ops}, Counter(i for o in ops for i in o.inputs)
    alias, kept = {}, []
    for o in ops:
        o.inputs = [alias.get(i, i) for i in o.inputs]
        src = by_key.get(o.inputs[0]) if o.op == "bias" else None
        if src is not None and src.op == "linear" and "bias" not in tensors[src.key] and users[src.key] == 1:
            tensors[src.key]["bias"] = tensors[o.key]["bias"]
            src.args.pop("bias", None)
            alias[o.key] = src.key
            continue
        if o.op == "bias":
            raise WeightsError.at(where, f"unsupported node '{o.key}': op Add of a constant (not a MatMul's bias)",
                                  _HINT)
        kept.append(o)
    return kept
