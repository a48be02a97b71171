"""An ONNX model as the same flat list of resgraph ops that trace.py makes of a torch model.

Each ONNX node becomes one Op (key: its first output's name; inputs: the ops that produce the tensors
it reads, initializers left out), and its initializers become that op's tensors in torch's layout
(`weight`, `bias`, `running_mean`, `running_var`). A few ops that ONNX spells as several nodes are
read back as one where the nodes are exactly that op (onnx_patterns.py: resgraph's own lowerings,
see backends/onnx/lower.py): a layer norm over the channels between two Transposes, gelu as erf, silu as
x * sigmoid(x), the zeropad shortcut as Slice + Pad. The node's name is its module path where it
looks like one (resgraph's own model.onnx names each node by its IR path: `layer1.0.conv1`); torch's
exporter names (`/layer1/layer1.0/conv1/Conv`) are read as the path they spell; other names are
replaced by the op and a count. Every node resgraph has no op for is listed at once.
"""
from __future__ import annotations

import os
import re
from collections import Counter

import numpy as np

from ...errors import Diagnostic, Loc, WeightsError
from .geometry import conv_args, pool_args
from .onnx_patterns import _attrs, _Ctx, _f32, _fuse, _layernorm
from .trace import Op, _drop_identities, _nondefault

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_PLAIN = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hardswish", "Mul": "mul", "Mish": "mish",
          "GlobalAveragePool": "global_avgpool", "Identity": "identity", "Dropout": "identity"}
_HINT = "resgraph has no op for it; see docs/spec-language.md section 3.13; nothing was written"
_BIG = 64   # initializers above this many elements are left out of the copy that shape inference reads


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
    g = model.graph
    init = _constants(g)
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 1:
        raise WeightsError.at(where, f"the model takes {len(inputs)} inputs; resgraph import reads one image input",
                              "export the model with one input; nothing was written")
    shape = tuple(d.dim_value for d in inputs[0].type.tensor_type.shape.dim[1:])
    ctx = _Ctx(g, init, _shapes(model, init), _opset(model))
    fused, absorbed = _fuse(g.node, ctx)
    ops, tensors, bad, paths = [], {}, [], Counter()
    for n in g.node:
        if n.op_type == "Constant" or n.output[0] in init or n.output[0] in absorbed:
            continue
        got = fused.get(n.output[0]) or _map(n, ctx)
        path = _path(n.name, n.op_type, paths)
        if isinstance(got, str):
            bad.append(Diagnostic(Loc(where, 0, 0), f"unsupported node '{n.name or n.output[0]}': {got}", _HINT))
            continue
        op, args, ts, *ins = got
        ins = ins[0] if ins else [i for i in n.input if i and i not in init]
        ops.append(Op(n.output[0], op, args, ins, path, tuple(ctx.shapes.get(n.output[0], ()))[1:]))
        tensors[n.output[0]] = ts
    if bad:
        raise WeightsError(bad, ordered=True)
    return _merge_bias(_drop_identities(ops), tensors, where), inputs[0].name, tensors, shape


def _constants(g) -> dict:
    """Initializers, Constant nodes' values, Identities and Reshapes of constants (a [C] weight shaped
    [C, 1, 1])."""
    from onnx import numpy_helper
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in init:   # torch's exporter shares equal tensors so
            init[n.output[0]] = init[n.input[0]]
        elif n.op_type == "Reshape" and all(i in init for i in n.input) and not _attrs(n).get("allowzero", 0):
            shape = [d if d else init[n.input[0]].shape[i] for i, d in enumerate(init[n.input[1]].tolist())]
            init[n.output[0]] = init[n.input[0]].reshape(shape)
    return init


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _shapes(model, init: dict) -> dict:
    """Every tensor's dims as ONNX's shape inference gives them (0 for a symbolic dim), run on a copy
    that declares the large initializers as inputs instead of carrying their data."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference
    g = model.graph
    big = [t for t in g.initializer if np.prod(t.dims) > _BIG]
    light = helper.make_graph(
        list(g.node), g.name, list(g.input) + [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in big],
        list(g.output), [numpy_helper.from_array(init[t.name], t.name) for t in g.initializer if t not in big])
    light.value_info.extend(g.value_info)   # what the model declares where inference stops (GroupNormalization)
    m = helper.make_model(light, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        m = shape_inference.infer_shapes(m)
    except onnx.onnx_cpp2py_export.shape_inference.InferenceError:   # a model ONNX cannot infer: no shapes
        return {}
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)
            if v.type.tensor_type.HasField("shape")}


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


# --- one node, one op ------------------------------------------------------------------------------

def _map(n, ctx: _Ctx):
    """(op, args, tensors) for a node, or a string saying what it is when resgraph has no op for it."""
    a, t, init = _attrs(n), n.op_type, ctx.init
    consts = [i for i in n.input[1:] if i in init]
    if t in _PLAIN and not any(i in init for i in n.input):
        return _PLAIN[t], {}, {}
    if t == "PRelu" and len(consts) == 1 and init[consts[0]].size > 1:   # one slope per channel
        return "prelu", {}, {"weight": np.ascontiguousarray(init[consts[0]].reshape(-1))}
    if t == "LeakyRelu":
        return "leaky_relu", _nondefault({"slope": _f32(a.get("alpha", 0.01))}, {"slope": 0.01}), {}
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
        momentum = round(1 - _f32(a.get("momentum", 0.9)), 6)   # ONNX's weighs the old statistics, torch's the new
        args = _nondefault({"eps": _f32(a.get("epsilon", 1e-5)), "momentum": momentum}, {"eps": 1e-5, "momentum": 0.1})
        return "bn", args, {"weight": s, "bias": b, "running_mean": m, "running_var": v}
    if t in ("MaxPool", "AveragePool"):
        return _pool(t, a)
    if t in ("Gemm", "MatMul"):
        return _linear(n, a, init)
    got = _MORE[t](n, a, ctx) if t in _MORE else None
    return got or f"op {t}" + (" (with these attributes or constant inputs)" if t in _KNOWN else "")


def _scalars(n, ctx: _Ctx) -> list:
    return [_f32(float(ctx.init[i].reshape(()))) if i in ctx.init and ctx.init[i].size == 1 else None
            for i in n.input[1:]]


def _clip(n, a, ctx):
    return ("relu6", {}, {}) if _scalars(n, ctx) == [0.0, 6.0] else None


def _hardsigmoid(n, a, ctx):
    ok = _f32(a.get("alpha", 0.2)) == _f32(1 / 6) and _f32(a.get("beta", 0.5)) == 0.5
    return ("hardsigmoid", {}, {}) if ok else None


def _softmax(n, a, ctx):
    rank = ctx.rank(n.input[0])
    axis = a.get("axis", -1 if ctx.opset >= 13 else 1)   # before 13: over all axes from `axis` on
    return ("softmax", {}, {}) if rank and axis % rank == 1 and (ctx.opset >= 13 or rank == 2) else None


def _gelu_op(n, a, ctx):
    return ("gelu", {}, {}) if a.get("approximate", b"none") in ("none", b"none") else None


def _scale(n, a, ctx):
    """x times a per-channel constant: [C, 1, 1] on a map, [C] on a vector."""
    if len(n.input) != 2 or n.input[0] in ctx.init and n.input[1] in ctx.init:
        return None
    x, c = n.input if n.input[1] in ctx.init else n.input[::-1]
    w, shape = ctx.init.get(c), ctx.shapes.get(x)
    if w is None or not shape or w.shape not in ((shape[1],) + (1,) * (len(shape) - 2), (1, shape[1]) + (1,) *
                                                 (len(shape) - 2)):
        return None
    return "scale", {}, {"weight": np.ascontiguousarray(w.reshape(-1))}, [x]


def _reduce_mean(n, a, ctx):
    axes = ctx.init[n.input[1]].tolist() if len(n.input) > 1 and n.input[1] in ctx.init else a.get("axes")
    rank = ctx.rank(n.input[0])
    ok = rank == 4 and axes is not None and sorted(x % 4 for x in axes) == [2, 3] and a.get("keepdims", 1)
    return ("global_avgpool", {}, {}, [n.input[0]]) if ok else None


def _layernorm_vec(n, a, ctx):
    return _layernorm(n, ctx, 2) if ctx.rank(n.input[0]) == 2 else None


def _groupnorm(n, a, ctx):
    """GroupNormalization from opset 21 (per-channel scale and bias, as resgraph's and PyTorch's)."""
    if ctx.opset < 21 or not all(i in ctx.init for i in n.input[1:3]):
        return None
    args = {"groups": int(a["num_groups"]), **_nondefault({"eps": _f32(a.get("epsilon", 1e-5))}, {"eps": 1e-5})}
    return "groupnorm", args, {"weight": ctx.init[n.input[1]], "bias": ctx.init[n.input[2]]}


def _resize(n, a, ctx):
    """Resize by a constant integer factor s on H and W: nearest as PyTorch's (floor), or bilinear."""
    scales = ctx.init.get(n.input[2]) if len(n.input) > 2 else None
    if scales is None or (len(n.input) > 3 and n.input[3]) or len(scales) != 4:
        return None
    one, one2, s, s2 = scales.tolist()
    mode = {(b"nearest", b"asymmetric", b"floor"): "nearest", (b"linear", b"pytorch_half_pixel", None): "bilinear"}
    key = tuple(_bytes(a.get(k, d)) for k, d in (("mode", b"nearest"), ("coordinate_transformation_mode",
                                                                       b"half_pixel"), ("nearest_mode", None)))
    key = key[:2] + ((key[2] or b"round_prefer_floor") if key[0] == b"nearest" else None,)
    odd = a.get("antialias", 0) or a.get("exclude_outside", 0) or "axes" in a
    if (one, one2) != (1.0, 1.0) or s != s2 or s != int(s) or key not in mode or odd:
        return None
    return "upsample", {"scale": int(s), "mode": mode[key]}, {}, [n.input[0]]


def _bytes(v):
    return v.encode() if isinstance(v, str) else v


def _conv_transpose(n, a, ctx):
    from ...ops import ShapeError, transpose_pads
    w = ctx.init.get(n.input[1])
    if w is None or w.ndim != 4 or "output_shape" in a or a.get("auto_pad", b"NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    k, s, d, p = _square2(a, "kernel_shape", w.shape[-1]), _square2(a, "strides", 1), _square2(a, "dilations", 1), \
        _pads(a)
    q = _square2(a, "output_padding", 0)
    if None in (k, s, d, p, q):
        return None
    try:
        same = transpose_pads("same", k, s, d, 0) == (p, q)
    except ShapeError:
        same = False
    g = int(a.get("group", 1))
    ts = {"weight": w, **({"bias": ctx.init[n.input[2]]} if len(n.input) > 2 and n.input[2] else {})}
    args = {"out": int(w.shape[1]) * g, "kernel": k, "stride": s, "padding": "same" if same else (p or "valid"),
            "output_padding": 0 if same else q, "dilation": d, "groups": g, "bias": "bias" in ts}
    return "conv_transpose", _nondefault(args, {"stride": 1, "padding": "same", "output_padding": 0, "dilation": 1,
                                                "groups": 1}), ts


_MORE = {"Clip": _clip, "HardSigmoid": _hardsigmoid, "Softmax": _softmax, "Gelu": _gelu_op, "Mul": _scale,
         "ReduceMean": _reduce_mean, "LayerNormalization": _layernorm_vec, "GroupNormalization": _groupnorm,
         "Resize": _resize, "ConvTranspose": _conv_transpose}
_KNOWN = ("Relu", "Sigmoid", "Tanh", "HardSwish", "Mul", "Add", "Concat", "Flatten", "Conv", "BatchNormalization",
          "MaxPool", "AveragePool", "Gemm", "MatMul", "GlobalAveragePool", *_MORE)


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
    if w.ndim != 4:
        return "op Conv (not 2-d)"
    k = [int(v) for v in a.get("kernel_shape", w.shape[-2:])]
    s, d = [int(v) for v in a.get("strides", [1, 1])], [int(v) for v in a.get("dilations", [1, 1])]
    p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
    ts = {"weight": w, **({"bias": init[n.input[2]]} if len(n.input) > 2 and n.input[2] else {})}
    args = conv_args(int(w.shape[0]), k, s, d, [(p[0], p[2]), (p[1], p[3])], int(a.get("group", 1)), "bias" in ts)
    return ("conv", args, ts) if args is not None else "op Conv (asymmetric pads other than 'same')"


def _pool(t: str, a: dict):
    k = [int(v) for v in a.get("kernel_shape", [])]
    s = [int(v) for v in a.get("strides", [1, 1])]
    p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
    name = "maxpool" if t == "MaxPool" else "avgpool"
    if len(k) != 2 or len(p) != 4 or (p[0], p[1]) != (p[2], p[3]) or \
            a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or \
            (name == "maxpool" and _square2(a, "dilations", 1) != 1) or (name == "avgpool" and any(p) and
                                                                        a.get("count_include_pad", 0)):
        return f"op {t} (not 2-d, asymmetric pads, dilated, auto-padded or counting padding)"
    args = pool_args(k, s, p[:2])
    return name, {**args, **({"ceil_mode": True} if a.get("ceil_mode", 0) else {})}, {}


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
            tensors[src.key]["bias"] = tensors.pop(o.key)["bias"]
            src.args.pop("bias", None)
            alias[o.key] = src.key
            continue
        if o.op == "bias":
            raise WeightsError.at(where, f"unsupported node '{o.key}': op Add of a constant (not a MatMul's bias)",
                                  _HINT)
        kept.append(o)
    return kept
