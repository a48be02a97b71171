"""IR + weights -> ONNX ModelProto, built with the onnx package (no torch, no tracing).

Naming: every tensor is named after the IR path that computes it (layer2.0.conv1), initializers
after the parameter paths (layer2.0.conv1.weight), the graph's input and output after the spec.
The batch dimension is symbolic ("batch"). Shapes come from the IR; ONNX shape inference is run
afterwards by the checks (check.py) and must agree with them.

LOWER is the ONNX column of the op table: importing this module fails, naming the op, if an op of
resgraph.ops.OPS has no entry (ops.table.check_lowerings).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...ir import Graph
from ...ops import transpose_pads
from ...ops.shapes import channel_range, hw, pads_hw
from ...ops.table import check_lowerings, tensors
from .writer import initializer_header

DEFAULT_OPSET = 17
OPSETS = range(13, 22)   # docs/onnx.md: which runtimes read which
# ops whose lowering depends on the opset: from this opset one ONNX op, below it an exact decomposition
SINGLE_OP_FROM = {"hardswish": 14, "layernorm": 17, "mish": 18, "gelu": 20, "groupnorm": 21}
INT64_MAX = np.iinfo(np.int64).max


class _Builder:
    def __init__(self, graph: Graph, weights: dict, dtype):
        self.ir, self.w, self.dtype = graph, weights, dtype
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}   # name -> array; written into the model once, at the end
        self.opset = DEFAULT_OPSET
        self.declared: dict[str, tuple] = {}   # output -> IR shape, where ONNX's shape inference stops
        self.dynamic = False                   # symbolic spatial dims: no lowering may bake in a size

    def op(self, op_type: str, inputs: list[str], output: str, name: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name or output, **attrs))
        return output

    def weight(self, name: str) -> str:
        if name not in self.inits:
            if name not in self.w:
                raise KeyError(name)
            with np.errstate(over="ignore"):   # fp16 overflow becomes inf: compile names such tensors
                self.inits[name] = np.ascontiguousarray(self.w[name], dtype=self.dtype)
        return name

    def const(self, name: str, value, dtype=None) -> str:
        if name not in self.inits:
            self.inits[name] = np.asarray(value, dtype=dtype or self.dtype)
        return name

    def param(self, n, suffix: str) -> str:
        """The initializer of node n's tensor `suffix`, named as the op table's `tensors` names it."""
        assert suffix in tensors(n.op, dict(n.args), [self.ir[i].shape for i in n.inputs], n.shape), (n.path, suffix)
        return self.weight(f"{n.path}.{suffix}")

    def has(self, name: str) -> bool:
        return name in self.w


def _pads(padding, k, d=1) -> list[int]:
    """The op table's (begin, end) per axis in ONNX's order: [H_begin, W_begin, H_end, W_end]."""
    (bh, eh), (bw, ew) = pads_hw(padding, k, d)
    return [bh, bw, eh, ew]


# --- lowerings: (builder, node, input names) -> output name ---------------------------------------

def conv(b, n, xs):
    a = n.args
    ins = [xs[0], b.param(n, "weight")]
    if a["bias"]:
        ins.append(b.param(n, "bias"))
    return b.op("Conv", ins, n.path, kernel_shape=list(hw(a["kernel"])), strides=list(hw(a["stride"])),
                dilations=list(hw(a["dilation"])), group=a["groups"], pads=_pads(a["padding"], a["kernel"], a["dilation"]))


def conv_transpose(b, n, xs):
    a = n.args
    p, q = transpose_pads(a["padding"], a["kernel"], a["stride"], a["dilation"], a["output_padding"])
    ins = [xs[0], b.param(n, "weight")]
    if a["bias"]:
        ins.append(b.param(n, "bias"))
    return b.op("ConvTranspose", ins, n.path, kernel_shape=[a["kernel"]] * 2, strides=[a["stride"]] * 2,
                dilations=[a["dilation"]] * 2, group=a["groups"], pads=[p] * 4, output_padding=[q] * 2)


def bn(b, n, xs, part=""):
    """A bn node, or (part "bn.") the bn inside a `project`, whose eps the project node carries."""
    stats = [b.param(n, part + k) for k in ("weight", "bias", "running_mean", "running_var")]
    return b.op("BatchNormalization", [xs[0], *stats], n.path, epsilon=float(n.args["eps"]))


def _per_channel(b, n, name: str) -> str:
    """The [C] tensor `name` of node n, shaped to broadcast over [N, C, H, W] (or as is on vectors)."""
    t = b.param(n, name)
    if len(n.shape) == 1:
        return t
    return b.op("Reshape", [t, b.const("const.per_channel", [-1, 1, 1], np.int64)], f"{n.path}/{name}_c11")


def layernorm(b, n, xs):
    """LayerNormalization normalises trailing axes; over the channels of a map that is the last
    axis of [N, H, W, C], so maps go there and back (as torchvision's LayerNorm2d permutes).
    Below opset 17, which has no LayerNormalization, its exact decomposition (`_layernorm_parts`)."""
    eps = float(n.args["eps"])
    if b.opset < SINGLE_OP_FROM["layernorm"]:
        return _layernorm_parts(b, n, xs[0], eps)
    if len(n.shape) == 1:
        return b.op("LayerNormalization", [xs[0], b.param(n, "weight"), b.param(n, "bias")], n.path, axis=-1, epsilon=eps)
    t = b.op("Transpose", xs, f"{n.path}/nhwc", perm=[0, 2, 3, 1])
    t = b.op("LayerNormalization", [t, b.param(n, "weight"), b.param(n, "bias")], f"{n.path}/norm", axis=-1, epsilon=eps)
    return b.op("Transpose", [t], n.path, perm=[0, 3, 1, 2])


def _layernorm_parts(b, n, x: str, eps: float) -> str:
    """(x - mean) / sqrt(var + eps) * weight + bias over the channel axis (1, of [N, C] or
    [N, C, H, W]: no transposes needed), var the biased variance, as PyTorch's LayerNorm and
    ONNX's own function body for LayerNormalization. In fp16 the statistics are taken in fp32 (a
    Cast each way), as LayerNormalization's default stash_type does."""
    p, fp16 = n.path, b.dtype == np.float16
    if fp16:
        x = b.op("Cast", [x], f"{p}/fp32", to=TensorProto.FLOAT)
    mean = reduce_mean(b, x, [1], f"{p}/mean")
    d = b.op("Sub", [x, mean], f"{p}/centred")
    var = reduce_mean(b, b.op("Mul", [d, d], f"{p}/squared"), [1], f"{p}/var")
    std = b.op("Sqrt", [b.op("Add", [var, b.const(f"const.eps{eps!r}", eps, np.float32)], f"{p}/var_eps")], f"{p}/std")
    t = b.op("Div", [d, std], f"{p}/normed")
    if fp16:
        t = b.op("Cast", [t], f"{p}/normed_fp16", to=TensorProto.FLOAT16)
    t = b.op("Mul", [t, _per_channel(b, n, "weight")], f"{p}/scale")
    return b.op("Add", [t, _per_channel(b, n, "bias")], p)


def reduce_mean(b, x: str, axes: list[int], out: str) -> str:
    """ReduceMean keeping the reduced axes, in the form of opsets 13 to 17 (`axes` an attribute;
    from 18 it is an input): only layernorm below 17 uses it."""
    assert b.opset < 18, b.opset
    return b.op("ReduceMean", [x], out, axes=axes, keepdims=1)


def groupnorm(b, n, xs):
    """GroupNormalization from opset 21 (whose scale and bias are per channel, as PyTorch's; opset
    18's were per group). Below: InstanceNormalization over [N, G, C/G * H * W], then the affine."""
    g, eps, p = n.args["groups"], float(n.args["eps"]), n.path
    if b.opset >= SINGLE_OP_FROM["groupnorm"]:
        # onnx (1.23) infers no shape through this function op: declare the IR's, so inference goes on
        # past it and check.py still compares every later tensor (parity tests check this one's values)
        b.declared[p] = n.shape
        return b.op("GroupNormalization", [xs[0], b.param(n, "weight"), b.param(n, "bias")], p,
                    num_groups=g, epsilon=eps)
    t = b.op("Reshape", [xs[0], b.const(f"const.groups{g}", [0, g, -1], np.int64)], f"{p}/grouped")
    t = b.op("InstanceNormalization", [t, b.const(f"const.ones{g}", np.ones(g)), b.const(f"const.zeros{g}", np.zeros(g))],
             f"{p}/norm", epsilon=eps)
    t = b.op("Reshape", [t, b.op("Shape", xs, f"{p}/shape")], f"{p}/ungrouped")
    if b.opset < 14:   # onnx's Reshape-13 shape inference does not read a shape that Shape computes
        b.declared[t] = n.shape
    t = b.op("Mul", [t, _per_channel(b, n, "weight")], f"{p}/scale")
    return b.op("Add", [t, _per_channel(b, n, "bias")], p)


def scale(b, n, xs):
    return b.op("Mul", [xs[0], _per_channel(b, n, "weight")], n.path)


def mul(b, n, xs):
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        acc = b.op("Mul", [acc, x], n.path if i == len(xs) - 1 else f"{n.path}/mul{i}")
    return acc


def linear(b, n, xs):
    ins = [xs[0], b.param(n, "weight")]
    if n.args["bias"]:
        ins.append(b.param(n, "bias"))
    return b.op("Gemm", ins, n.path, transB=1)


def simple(op_type, **attrs):
    return lambda b, n, xs: b.op(op_type, xs, n.path, **attrs)


def relu6(b, n, xs):
    return b.op("Clip", [xs[0], b.const("const.zero", 0.0), b.const("const.six", 6.0)], n.path)


def gelu(b, n, xs):
    if b.opset >= SINGLE_OP_FROM["gelu"]:
        return b.op("Gelu", xs, n.path)
    # 0.5 * x * (1 + erf(x / sqrt(2))), PyTorch's exact gelu
    p = n.path
    t = b.op("Div", [xs[0], b.const("const.sqrt2", np.sqrt(2.0))], f"{p}/div")
    t = b.op("Erf", [t], f"{p}/erf")
    t = b.op("Add", [t, b.const("const.one", 1.0)], f"{p}/add")
    t = b.op("Mul", [xs[0], t], f"{p}/mul")
    return b.op("Mul", [t, b.const("const.half", 0.5)], p)


def silu(b, n, xs):
    s = b.op("Sigmoid", xs, f"{n.path}/sigmoid")
    return b.op("Mul", [xs[0], s], n.path)


def hardswish(b, n, xs):
    """HardSwish from opset 14; below, its definition: x * HardSigmoid(x) (alpha 1/6, beta 0.5)."""
    if b.opset >= SINGLE_OP_FROM["hardswish"]:
        return b.op("HardSwish", xs, n.path)
    return b.op("Mul", [xs[0], b.op("HardSigmoid", xs, f"{n.path}/gate", alpha=1 / 6, beta=0.5)], n.path)


def prelu(b, n, xs):
    """PRelu with the [C] slope broadcast over [N, C, H, W] as [C, 1, 1] (unidirectional broadcasting)."""
    return b.op("PRelu", [xs[0], _per_channel(b, n, "weight")], n.path)


def mish(b, n, xs):
    """Mish from opset 18; below, its definition: x * tanh(softplus(x))."""
    if b.opset >= SINGLE_OP_FROM["mish"]:
        return b.op("Mish", xs, n.path)
    t = b.op("Tanh", [b.op("Softplus", xs, f"{n.path}/softplus")], f"{n.path}/tanh")
    return b.op("Mul", [xs[0], t], n.path)


def leaky_relu(b, n, xs):
    return b.op("LeakyRelu", xs, n.path, alpha=float(n.args["slope"]))


def _pool_pads(b, n) -> list[int]:
    """Floor-mode pads, [H_begin, W_begin, H_end, W_end], that give exactly the IR's output size.

    ceil_mode is floor mode with the end padding grown until the last window fits. resgraph never
    emits ceil_mode=1: PyTorch (and ONNX Runtime) drop a last window that would start in the end
    padding, ONNX's shape inference does not, so the model would contradict its own declared shapes.
    The padding stays below the kernel, as ONNX Runtime requires: a kept ceil window starts inside
    the input or the begin padding. 'same' needs no growth: floor mode already gives ceil(n / s).
    """
    a = n.args
    k, s = hw(a["kernel"]), hw(a["stride"])
    bh, bw, eh, ew = _pads(a["padding"], a["kernel"])
    _, h, w = b.ir[n.inputs[0]].shape
    _, oh, ow = n.shape
    ends = [max(e, (o - 1) * si + ki - size - bg) for e, o, si, ki, size, bg in ((eh, oh, s[0], k[0], h, bh),
                                                                                (ew, ow, s[1], k[1], w, bw))]
    assert bh < k[0] and bw < k[1] and ends[0] < k[0] and ends[1] < k[1], (n.path, bh, bw, ends)
    return [bh, bw, *ends]


def maxpool(b, n, xs):
    a = n.args
    return b.op("MaxPool", xs, n.path, kernel_shape=list(hw(a["kernel"])), strides=list(hw(a["stride"])),
                **_pool_mode(b, n))


def avgpool(b, n, xs):
    a = n.args   # count_include_pad=0: grown end padding is not counted either, as in PyTorch's ceil_mode
    return b.op("AveragePool", xs, n.path, kernel_shape=list(hw(a["kernel"])), strides=list(hw(a["stride"])),
                count_include_pad=0, **_pool_mode(b, n))


def _pool_mode(b, n) -> dict:
    """Floor-mode pads sized for the IR's shapes; where the spatial size is symbolic, a ceil_mode
    pool keeps ONNX's ceil_mode (ONNX Runtime then drops a window starting in the end padding, as
    PyTorch does: the parity tests run such models at several sizes)."""
    if b.dynamic and n.args.get("ceil_mode"):
        return {"pads": _pads(n.args["padding"], n.args["kernel"]), "ceil_mode": 1}
    return {"pads": _pool_pads(b, n)}


def flatten(b, n, xs):
    if len(b.ir[n.inputs[0]].shape) == 1:
        return b.op("Identity", xs, n.path)
    return b.op("Flatten", xs, n.path, axis=1)


def add(b, n, xs):
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        acc = b.op("Add", [acc, x], n.path if i == len(xs) - 1 else f"{n.path}/add{i}")
    return acc


def split(b, n, xs):
    """One part of a split or chunk: channels [begin, end) of its input, a Slice on axis 1."""
    begin, end = channel_range(n.op, n.args, b.ir[n.inputs[0]].shape[0])
    return b.op("Slice", [xs[0], b.const(f"{n.path}/starts", [begin], np.int64), b.const(f"{n.path}/ends", [end], np.int64),
                          b.const("const.axis1", [1], np.int64)], n.path)


def upsample(b, n, xs):
    s = float(n.args["scale"])
    scales = b.const(f"{n.path}/scales", [1.0, 1.0, s, s], np.float32)
    if n.args["mode"] == "nearest":   # PyTorch's nearest: floor(dst * in / out)
        return b.op("Resize", [xs[0], "", scales], n.path, mode="nearest",
                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return b.op("Resize", [xs[0], "", scales], n.path, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")


def project(b, n, xs):
    src = b.ir[n.inputs[0]].shape
    if len(src) == 1:
        return b.op("Gemm", [xs[0], b.param(n, "weight")], n.path, transB=1)
    c = b.op("Conv", [xs[0], b.param(n, "conv.weight")], f"{n.path}.conv", kernel_shape=[1, 1],
             strides=[n.args["stride"]] * 2)
    return bn(b, n, [c], part="bn.")


def zeropad(b, n, xs):
    """Option A: every s-th pixel, then zero channels up to `out`."""
    src = b.ir[n.inputs[0]].shape
    x, s = xs[0], n.args["stride"]
    if len(src) == 3:
        if s > 1:
            x = b.op("Slice", [x, b.const("const.slice_starts", [0, 0], np.int64),
                               b.const("const.slice_ends", [INT64_MAX, INT64_MAX], np.int64),
                               b.const("const.slice_axes", [2, 3], np.int64),
                               b.const(f"const.slice_steps{s}", [s, s], np.int64)], f"{n.path}/subsample")
        pads = [0, 0, 0, 0, 0, n.args["out"] - src[0], 0, 0]
    else:
        pads = [0, 0, 0, n.args["out"] - src[0]]
    return b.op("Pad", [x, b.const(f"{n.path}/pads", pads, np.int64)], n.path, mode="constant")


LOWER = {
    "conv": conv, "conv_transpose": conv_transpose, "bn": bn, "linear": linear,
    "relu": simple("Relu"), "relu6": relu6, "sigmoid": simple("Sigmoid"), "tanh": simple("Tanh"), "gelu": gelu,
    "silu": silu, "leaky_relu": leaky_relu, "hardswish": hardswish, "prelu": prelu, "mish": mish,
    "hardsigmoid": simple("HardSigmoid", alpha=1 / 6, beta=0.5),   # PyTorch's: relu6(x + 3) / 6
    "layernorm": layernorm, "groupnorm": groupnorm, "scale": scale, "drop_path": simple("Identity"), "mul": mul, "maxpool": maxpool, "avgpool": avgpool,
    "global_avgpool": simple("GlobalAveragePool"), "flatten": flatten, "dropout": simple("Identity"),
    "softmax": simple("Softmax", axis=1), "add": add, "concat": simple("Concat", axis=1), "split": split, "chunk": split,
    "upsample": upsample,
    "identity": simple("Identity"), "project": project, "zeropad": zeropad,
}
check_lowerings(LOWER, "ONNX", __name__)   # every op of the table, at import


def _plugin(op: str):
    """A plugin op's ONNX lowering (OpDef.onnx): a function of the same (builder, node, input names)
    -> output name signature as LOWER's, building its nodes with the builder's op, param and const."""
    from ...ops import OPS
    from ...ops.plugins import lowering
    return lowering(OPS[op], "onnx")


SMALL = 64   # initializers up to this many elements travel inside the model even when weights stream


def build(graph: Graph, weights: dict, opset: int = DEFAULT_OPSET, precision: str = "fp32",
          metadata: dict | None = None, dims: dict | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model without its large initializers, and those as arrays (name -> little-endian array).

    `to_onnx` attaches them for a complete ModelProto; `writer.write_model` streams them straight
    into the file, so a 100 MB model is never held as one protobuf message.

    Inputs and outputs are the graph's, by name, in spec order. `dims`: per input and output name,
    its dims without the batch where they differ from the IR's, a string for a symbolic one (size
    variables: ["3", "H", "W"]; derived: "ceil(H / 32)"). Then no tensor inside is declared with a
    fixed spatial size, and every lowering is one that holds at any size (pads, scales, slices).
    """
    assert opset in OPSETS, opset
    assert precision in ("fp32", "fp16"), precision
    dtype = np.float16 if precision == "fp16" else np.float32
    b = _Builder(graph, weights, dtype)
    b.opset = opset
    b.dynamic = bool(dims)
    env = {}
    for name, path in graph.inputs:
        env[path] = b.op("Cast", [name], f"{name}/fp16", to=TensorProto.FLOAT16) if precision == "fp16" else name
    for n in graph.nodes[len(graph.inputs):]:
        env[n.path] = (LOWER.get(n.op) or _plugin(n.op))(b, n, [env[i] for i in n.inputs])
    # each output tensor takes its name: renamed where it is computed, or a Cast (fp16) or an
    # Identity (an input, or a tensor that is already another output) in front of it
    renamed: dict[str, str] = {}
    in_names = {name for name, _ in graph.inputs}
    for name, path in graph.outputs:
        out = env[path]
        if precision == "fp16":
            b.op("Cast", [out], name, name=f"{name}/fp32", to=TensorProto.FLOAT)
        elif out in in_names or out in renamed:
            b.op("Identity", [renamed.get(out, out)], name)
        else:
            renamed[out] = name
    if renamed:
        for node in b.nodes:
            node.output[:] = [renamed.get(o, o) for o in node.output]
            node.input[:] = [renamed.get(i, i) for i in node.input]
    dims = dims or {}
    # filled in place: helper.make_graph/make_model would copy every message again
    model = onnx.ModelProto()
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    model.opset_import.add(domain="", version=opset)
    model.producer_name, model.producer_version = "resgraph", _version()
    g = model.graph
    g.name = graph.name
    g.node.extend(b.nodes)
    for name, path in graph.inputs:
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims.get(name, graph[path].shape)]))
    for name, path in graph.outputs:
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims.get(name, graph[path].shape)]))
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    outs = {env[p] for _, p in graph.outputs}
    for name, shape in b.declared.items():
        if name not in outs:   # the graph's outputs are declared above
            if b.dynamic:       # the channels only: the spatial size varies
                shape = shape[:1] + (None,) * (len(shape) - 1)
            g.value_info.append(helper.make_tensor_value_info(name, elem, ["batch", *shape]))
    big = {}
    for name, arr in b.inits.items():
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        if arr.size > SMALL:
            big[name] = arr
        else:
            g.initializer.append(initializer_header(name, arr))
            g.initializer[-1].raw_data = arr.tobytes()
    model.doc_string = f"{graph.name}, compiled by resgraph from its spec"
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    return model, big


def to_onnx(graph: Graph, weights: dict, opset: int = DEFAULT_OPSET, precision: str = "fp32",
            metadata: dict | None = None, dims: dict | None = None) -> onnx.ModelProto:
    """Lower `graph` with `weights` (numpy arrays by parameter path) to a complete ModelProto.
    fp16: weights and compute in fp16, with fp32 input and output (a Cast at each edge), the form
    TensorRT 10+ builds from."""
    model, big = build(graph, weights, opset, precision, metadata, dims)
    for name, arr in big.items():
        model.graph.initializer.append(initializer_header(name, arr))
        model.graph.initializer[-1].raw_data = arr.tobytes()
    return model


def _version() -> str:
    from ...version import __version__
    return __version__
