"""IR -> torch.fx.GraphModule: a trainable nn.Module whose `forward` is readable Python.

Every IR node becomes one fx node named after its path (layer2.0.conv1 -> layer2_0_conv1); ops with
parameters become submodules at the node's path, so state-dict keys are the spec's hierarchical
names (layer2.0.conv1.weight, layer2.0.shortcut.conv.weight). Shapes come from the IR: a lowering
reads node.shape and its inputs' shapes, never re-derives them.

LOWER is the PyTorch column of the op table: importing this module fails, naming the op, if an op of
resgraph.ops.OPS has no entry (ops.table.check_lowerings), so an op cannot be added without its lowering.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...ir import Graph, Node
from ...ops import transpose_pads
from ...ops.shapes import channel_range, hw, pads_hw
from ...ops.count import state_dict_shapes
from ...ops.table import check_lowerings
from . import functional as RF
from .modules import DropPath, LayerNorm2d, Scale


# Ops whose output autograd does not keep (their backward needs their inputs, or nothing), so the
# one op that reads it may overwrite it: what torchvision's ReLU(inplace=True) and `out += identity`
# rely on. Saves an allocation and a memory pass per relu and residual add in eager mode. A fact of
# this lowering and of PyTorch's autograd (what each kernel saves for backward), not of the op: it
# stays here, beside LOWER, rather than on the op table's OpDef.
_OVERWRITABLE = {"bn", "conv", "conv_transpose", "linear", "add"}


class _Ctx:
    def __init__(self, graph: Graph):
        self.ir = graph
        self.users = graph.users()
        self.outputs = {p for _, p in graph.outputs}   # returned to the caller: never overwritten
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.paths: dict[str, str] = {}   # fx node name -> IR path

    def may_overwrite(self, node: Node, path: str) -> bool:
        """True if `node` is the only reader of `path`'s value and that value may be overwritten."""
        return self.ir[path].op in _OVERWRITABLE and self.users[path] == [node.path] and path not in self.outputs

    def shape(self, path: str):
        return self.ir[path].shape

    def module(self, path: str, mod: nn.Module, x: fx.Node | list, node: Node | None) -> fx.Node:
        """`mod` at `path`, called on x (or on each of a list of inputs)."""
        _set_submodule(self.root, path, mod)
        return self._create("call_module", path, tuple(x) if isinstance(x, list) else (x,), {}, node)

    def call(self, fn, args, node: Node | None, **kwargs) -> fx.Node:
        return self._create("call_function", fn, tuple(args), kwargs, node)

    def method(self, name, args, node: Node | None) -> fx.Node:
        return self._create("call_method", name, tuple(args), {}, node)

    def _create(self, kind, target, args, kwargs, node: Node | None) -> fx.Node:
        # fx nodes are named after IR paths (layer2.0.conv1 -> layer2_0_conv1) so `forward` reads like the spec
        name = node.path.replace(".", "_") if node is not None else None
        n = self.fx.create_node(kind, target, args, kwargs, name=name)
        if node is not None:
            self.paths[n.name] = node.path
        return n


def _set_submodule(root: nn.Module, path: str, mod: nn.Module) -> None:
    *parents, leaf = path.split(".")
    m = root
    for p in parents:
        if not hasattr(m, p):
            m.add_module(p, nn.Module())
        m = getattr(m, p)
    m.add_module(leaf, mod)


# --- lowerings: (ctx, node, fx inputs) -> fx node ------------------------------------------------

def conv(ctx, n, xs):
    a = n.args
    cin = ctx.shape(n.inputs[0])[0]
    (bh, eh), (bw, ew) = pads_hw(a["padding"], a["kernel"], a["dilation"])
    x = xs[0]
    if bh != eh or bw != ew:   # asymmetric 'same' (even kernels): pad explicitly, as TensorFlow and ONNX do
        x = ctx.call(F.pad, (x, (bw, ew, bh, eh)), None)
        bh = bw = 0
    mod = nn.Conv2d(cin, a["out"], hw(a["kernel"]), hw(a["stride"]), (bh, bw), hw(a["dilation"]), a["groups"], a["bias"])
    return ctx.module(n.path, mod, x, n)


def conv_transpose(ctx, n, xs):
    a = n.args
    p, q = transpose_pads(a["padding"], a["kernel"], a["stride"], a["dilation"], a["output_padding"])
    mod = nn.ConvTranspose2d(ctx.shape(n.inputs[0])[0], a["out"], a["kernel"], a["stride"], p, q, a["groups"],
                             a["bias"], a["dilation"])
    return ctx.module(n.path, mod, xs[0], n)


def bn(ctx, n, xs):
    c = n.shape[0]
    cls = nn.BatchNorm2d if len(n.shape) == 3 else nn.BatchNorm1d
    return ctx.module(n.path, cls(c, eps=n.args["eps"], momentum=n.args["momentum"]), xs[0], n)


def layernorm(ctx, n, xs):
    c = n.shape[0]
    cls = LayerNorm2d if len(n.shape) == 3 else nn.LayerNorm
    return ctx.module(n.path, cls(c, eps=n.args["eps"]), xs[0], n)


def groupnorm(ctx, n, xs):
    return ctx.module(n.path, nn.GroupNorm(n.args["groups"], n.shape[0], eps=n.args["eps"]), xs[0], n)


def scale(ctx, n, xs):
    return ctx.module(n.path, Scale(n.shape[0], n.args["init"]), xs[0], n)


def prelu(ctx, n, xs):
    return ctx.module(n.path, nn.PReLU(n.shape[0], n.args["init"]), xs[0], n)


def drop_path(ctx, n, xs):
    return ctx.module(n.path, DropPath(n.args["p"]), xs[0], n)


def mul(ctx, n, xs):
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        acc = ctx.call(operator.mul, (acc, x), n if i == len(xs) - 1 else None)
    return acc


def linear(ctx, n, xs):
    return ctx.module(n.path, nn.Linear(ctx.shape(n.inputs[0])[0], n.args["out"], n.args["bias"]), xs[0], n)


def pointwise(fn, **kw):
    return lambda ctx, n, xs: ctx.call(fn, xs, n, **kw)


def relu(ctx, n, xs):
    if ctx.may_overwrite(n, n.inputs[0]):
        return ctx.call(F.relu, xs, n, inplace=True)
    return ctx.call(F.relu, xs, n)


def leaky_relu(ctx, n, xs):
    return ctx.call(F.leaky_relu, xs, n, negative_slope=n.args["slope"])


def _ceil_mode(a) -> bool:
    """'same' fixes the output at ceil(n / s), which floor mode gives with its padding: ceil_mode
    there would add a window that starts in the (explicit, asymmetric) end padding."""
    return a["ceil_mode"] and a["padding"] != "same"


def maxpool(ctx, n, xs):
    a = n.args
    (bh, eh), (bw, ew) = pads_hw(a["padding"], a["kernel"])
    x = xs[0]
    if bh != eh or bw != ew:
        x = ctx.call(F.pad, (x, (bw, ew, bh, eh)), None, value=float("-inf"))
        bh = bw = 0
    return ctx.call(F.max_pool2d, (x, hw(a["kernel"]), hw(a["stride"]), (bh, bw)), n, ceil_mode=_ceil_mode(a))


def avgpool(ctx, n, xs):
    a = n.args
    (bh, eh), (bw, ew) = pads_hw(a["padding"], a["kernel"])
    k, s = hw(a["kernel"]), hw(a["stride"])
    if bh != eh or bw != ew:
        return ctx.call(RF.avg_pool_padded, (xs[0], k, s, (bw, ew, bh, eh), _ceil_mode(a)), n)
    return ctx.call(F.avg_pool2d, (xs[0], k, s, (bh, bw)), n, ceil_mode=_ceil_mode(a), count_include_pad=False)


def global_avgpool(ctx, n, xs):
    return ctx.call(F.adaptive_avg_pool2d, (xs[0], 1), n)


def flatten(ctx, n, xs):
    if len(ctx.shape(n.inputs[0])) == 1:
        return identity(ctx, n, xs)
    return ctx.call(torch.flatten, (xs[0], 1), n)


def dropout(ctx, n, xs):
    return ctx.module(n.path, nn.Dropout(n.args["p"]), xs[0], n)


def softmax(ctx, n, xs):
    return ctx.call(F.softmax, xs, n, dim=1)


def add(ctx, n, xs):
    inplace = ctx.may_overwrite(n, n.inputs[0]) and n.inputs[0] not in n.inputs[1:]
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        last = n if i == len(xs) - 1 else None
        acc = ctx.method("add_", (acc, x), last) if inplace else ctx.call(operator.add, (acc, x), last)
    return acc


def concat(ctx, n, xs):
    return ctx.call(torch.cat, (list(xs), 1), n)


def split(ctx, n, xs):
    """One part of a split or chunk: channels [begin, end) of its input (a view, as torch.split's parts)."""
    b, e = channel_range(n.op, n.args, ctx.shape(n.inputs[0])[0])
    return ctx.call(torch.narrow, (xs[0], 1, b, e - b), n)


def upsample(ctx, n, xs):
    a = n.args
    kw = {"align_corners": False} if a["mode"] == "bilinear" else {}
    return ctx.call(F.interpolate, xs, n, scale_factor=float(a["scale"]), mode=a["mode"], **kw)


def identity(ctx, n, xs):
    ctx.paths.setdefault(xs[0].name, n.path)   # nothing to compute: the path names its input's value
    return xs[0]


def project(ctx, n, xs):
    """An explicit Ws: conv1x1 (stride) + bn at <path>.conv / <path>.bn, or a bias-free linear at <path>."""
    src = ctx.shape(n.inputs[0])
    if len(src) == 1:
        return ctx.module(n.path, nn.Linear(src[0], n.args["out"], bias=False), xs[0], n)
    c = ctx.module(f"{n.path}.conv", nn.Conv2d(src[0], n.args["out"], 1, n.args["stride"], bias=False), xs[0], None)
    bn = nn.BatchNorm2d(n.args["out"], eps=n.args["eps"], momentum=n.args["momentum"])
    return ctx.module(f"{n.path}.bn", bn, c, n)


def zeropad(ctx, n, xs):
    return ctx.call(RF.zeropad, (xs[0], n.args["out"], n.args["stride"]), n)


LOWER = {
    "conv": conv, "conv_transpose": conv_transpose, "bn": bn, "linear": linear,
    "relu": relu, "relu6": pointwise(F.relu6), "sigmoid": pointwise(torch.sigmoid),
    "tanh": pointwise(torch.tanh), "gelu": pointwise(F.gelu), "silu": pointwise(F.silu), "leaky_relu": leaky_relu,
    "hardswish": pointwise(F.hardswish), "hardsigmoid": pointwise(F.hardsigmoid), "mish": pointwise(F.mish),
    "prelu": prelu, "layernorm": layernorm, "groupnorm": groupnorm, "scale": scale, "drop_path": drop_path, "mul": mul,
    "maxpool": maxpool, "avgpool": avgpool, "global_avgpool": global_avgpool, "flatten": flatten,
    "dropout": dropout, "softmax": softmax, "add": add, "concat": concat, "split": split, "chunk": split,
    "upsample": upsample,
    "identity": identity, "project": project, "zeropad": zeropad,
}
check_lowerings(LOWER, "PyTorch", __name__)   # every op of the table, at import


def lower(graph: Graph) -> fx.GraphModule:
    """The IR as a GraphModule. Parameters are freshly constructed (PyTorch defaults); see init.py."""
    ctx = _Ctx(graph)
    env: dict[str, fx.Node] = {}
    for name, path in graph.inputs:   # forward(image) or forward(image, mask): the spec's inputs in order
        x = ctx.fx.placeholder(name)
        ctx.paths[x.name] = path
        env[path] = x
    for n in graph.nodes[len(graph.inputs):]:
        fn = LOWER.get(n.op) or _plugin(n.op)
        env[n.path] = fn(ctx, n, [env[i] for i in n.inputs])
    # one output: the tensor; several (outputs:): a tuple in spec order, as ONNX and Triton list them
    outs = [env[p] for _, p in graph.outputs]
    ctx.fx.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = fx.GraphModule(ctx.root, ctx.fx, class_name=_class_name(graph.name))
    # the op table names every tensor (ops.table.tensors); the modules built above must agree with it
    assert {k: tuple(v.shape) for k, v in gm.state_dict().items()} == state_dict_shapes(graph), graph.name
    gm.meta["resgraph"] = {"name": graph.name, "paths": dict(ctx.paths), "input": graph.input_name,
                           "output": graph.output_name, "input_shape": graph.nodes[0].shape,
                           "output_shape": graph[graph.output].shape,
                           "inputs": [(n, graph[p].shape) for n, p in graph.inputs],
                           "outputs": [(n, graph[p].shape) for n, p in graph.outputs]}
    return gm


def _plugin(op: str):
    """A plugin op's lowering: the nn.Module its OpDef.torch builds, at the node's path, called on the
    node's inputs. The module's tensors must be the ones its OpDef.weights states (the names every
    back end and checkpoint use)."""
    from ...errors import PluginError
    from ...ops import OPS
    from ...ops.plugins import lowering
    from ...ops.table import tensors
    row = OPS[op]
    build = lowering(row, "torch")

    def lower_plugin(ctx, n, xs):
        ins = [ctx.shape(i) for i in n.inputs]
        mod = build(dict(n.args), ins, n.shape)
        if not isinstance(mod, nn.Module):
            raise PluginError.at(row.plugin, f"plugin {row.plugin}'s {row.torch} returned a {type(mod).__name__} for "
                                 f"{n.path}, not a torch.nn.Module", f"fix {row.plugin}")
        have = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
        want = tensors(op, dict(n.args), ins, n.shape)
        if have != want:
            raise PluginError.at(row.plugin, f"plugin {row.plugin}'s module for {n.path} ({op}) holds tensors {have}; "
                                 f"its OpDef.weights states {want}", f"make the two agree in {row.plugin}")
        return ctx.module(n.path, mod, xs, n)
    return lower_plugin


def _class_name(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.replace("-", "_").split("_") if p) or "Network"
