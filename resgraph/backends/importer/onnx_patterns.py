"""Several ONNX nodes that are exactly one resgraph op, read back as that op (resgraph's own lowerings,
backends/onnx/lower.py, spell these ops so): a layer norm over the channels between two Transposes,
PyTorch's exact gelu as erf (opsets below 20), silu as x * sigmoid(x), mish as x * tanh(softplus(x)), the zeropad shortcut as Slice +
Pad, a group norm as InstanceNormalization between Reshapes (opsets below 21). Each pattern matches at
its last node and only where every inner tensor has that one reader, so the nodes it absorbs compute
nothing else.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .trace import _nondefault


class _Ctx:
    """What the node mappings read: the constants, each tensor's shape (with the batch) where ONNX's
    shape inference gives it, the producer and the number of readers of each tensor, the opset."""
    def __init__(self, g, init: dict, shapes: dict, opset: int):
        self.init, self.shapes, self.opset = init, shapes, opset
        self.producer = {o: n for n in g.node for o in n.output}
        self.users = Counter(i for n in g.node for i in n.input)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return len(s) if s is not None else None

    def only(self, name: str, op_type: str):
        """The node of `op_type` that makes `name`, where `name` has no other reader; else None."""
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type and self.users[name] == 1 else None


def _attrs(n) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _f32(x: float) -> float:
    """An ONNX float attribute as the decimal it was written from: the shortest one that rounds to the
    same float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _fuse(nodes, ctx: _Ctx) -> tuple[dict, set]:
    """{the last node's output: (op, args, tensors, inputs)} and the outputs of the nodes it absorbs."""
    fused, absorbed = {}, set()
    for n in nodes:
        for pattern in _PATTERNS.get(n.op_type, ()):
            got = pattern(n, ctx)
            if got is not None:
                (op, args, ts, ins), inner = got
                fused[n.output[0]] = (op, args, ts, ins)
                absorbed.update(m.output[0] for m in inner)
                break
    return fused, absorbed


def _layernorm_map(n, ctx: _Ctx):
    """Transpose to NHWC, LayerNormalization over the last axis, Transpose back: resgraph's layernorm
    over the channels of each pixel."""
    ln = ctx.only(n.input[0], "LayerNormalization")
    t = ln and ctx.only(ln.input[0], "Transpose")
    if t is None or _attrs(n).get("perm") != [0, 3, 1, 2] or _attrs(t).get("perm") != [0, 2, 3, 1]:
        return None
    got = _layernorm(ln, ctx, 4)
    return None if got is None else ((*got, [t.input[0]]), [t, ln])


def _layernorm(n, ctx: _Ctx, rank: int):
    a = _attrs(n)
    if a.get("axis", -1) not in (-1, rank - 1) or len(n.input) < 3 or not all(i in ctx.init for i in n.input[1:3]):
        return None
    args = _nondefault({"eps": _f32(a.get("epsilon", 1e-5))}, {"eps": 1e-5})
    return "layernorm", args, {"weight": ctx.init[n.input[1]], "bias": ctx.init[n.input[2]]}


def _const(ctx: _Ctx, n, value: float) -> str | None:
    """The non-constant input of a two-input node whose other input is the scalar `value` (float32)."""
    a, b = n.input
    x, c = (a, b) if b in ctx.init else (b, a)
    if c not in ctx.init or x in ctx.init or ctx.init[c].size != 1:
        return None
    return x if _f32(float(ctx.init[c].reshape(()))) == _f32(value) else None


def _gelu(n, ctx: _Ctx):
    """0.5 * (x * (1 + erf(x / sqrt(2)))): PyTorch's exact gelu as opsets below 20 spell it."""
    m = ctx.only(_const(ctx, n, 0.5) or "", "Mul")
    xs = list(m.input) if m else []
    for i, x in enumerate(xs):
        add = ctx.only(xs[1 - i], "Add")
        erf = add and ctx.only(_const(ctx, add, 1.0) or "", "Erf")
        div = erf and ctx.only(erf.input[0], "Div")
        if div is not None and div.input[1] in ctx.init and div.input[0] == x and \
                _f32(float(ctx.init[div.input[1]].reshape(()))) == _f32(np.sqrt(2.0)):
            return ("gelu", {}, {}, [x]), [m, add, erf, div]
    return None


def _silu(n, ctx: _Ctx):
    """x * sigmoid(x), one reader of the sigmoid."""
    for i, x in enumerate(n.input):
        s = ctx.only(n.input[1 - i], "Sigmoid")
        if s is not None and s.input[0] == x and len(n.input) == 2:
            return ("silu", {}, {}, [x]), [s]
    return None


def _mish(n, ctx: _Ctx):
    """x * tanh(softplus(x)) (Mish below opset 18), one reader of each inner tensor."""
    for i, x in enumerate(n.input):
        t = ctx.only(n.input[1 - i], "Tanh") if len(n.input) == 2 else None
        sp = ctx.only(t.input[0], "Softplus") if t is not None else None
        if sp is not None and sp.input[0] == x:
            return ("mish", {}, {}, [x]), [t, sp]
    return None


def _zeropad(n, ctx: _Ctx):
    """Option A's shortcut: every s-th pixel (a Slice, where s > 1), then zero channels at the end."""
    a = _attrs(n)
    if a.get("mode", b"constant") not in ("constant", b"constant") or len(n.input) < 2 or n.input[1] not in ctx.init \
            or (len(n.input) > 2 and n.input[2] and (n.input[2] not in ctx.init or ctx.init[n.input[2]].any())):
        return None
    pads, x, inner, stride = ctx.init[n.input[1]].tolist(), n.input[0], [], 1
    s = ctx.only(x, "Slice")
    if s is not None and len(pads) == 8:
        stride = _subsample(s, ctx)
        if stride is None:
            return None
        x, inner = s.input[0], [s]
    c_in = (ctx.shapes.get(x) or [0, 0])[1]
    zero = [0] * (len(pads) // 2)
    want = zero[:1] + [0] + zero[2:] + zero[:1] + [pads[len(pads) // 2 + 1]] + zero[2:]
    if len(pads) not in (4, 8) or pads != want or not c_in or ctx.rank(x) != len(pads) // 2:
        return None
    return ("zeropad", {"out": c_in + pads[len(pads) // 2 + 1], "stride": stride}, {}, [x]), inner


def _subsample(s, ctx: _Ctx) -> int | None:
    """The stride s of a Slice that keeps every s-th pixel of H and W from the first, else None."""
    ins = [ctx.init.get(i) for i in s.input[1:]]
    if len(ins) != 4 or any(v is None for v in ins):
        return None
    starts, ends, axes, steps = (v.tolist() for v in ins)
    ok = starts == [0, 0] and axes in ([2, 3], [-2, -1]) and min(ends) >= 2 ** 31 - 1 and len(set(steps)) == 1
    return steps[0] if ok and steps[0] > 1 else None


def _groupnorm(n, ctx: _Ctx):
    """Opsets below 21: InstanceNormalization (scale 1, bias 0) over [N, G, C/G * H * W], shaped back,
    then the per-channel scale ([C, 1, 1]) and bias: resgraph's groupnorm."""
    b = n.input[1] if n.input[1] in ctx.init else None
    m = ctx.only(n.input[0], "Mul")
    w = m and next((i for i in m.input[1:] if i in ctx.init), None)
    back = w and ctx.only(m.input[0], "Reshape")
    shape = back and ctx.only(back.input[1], "Shape")
    norm = shape and ctx.only(back.input[0], "InstanceNormalization")
    grouped = norm and ctx.only(norm.input[0], "Reshape")
    if b is None or grouped is None or grouped.input[1] not in ctx.init or shape.input[0] != grouped.input[0]:
        return None
    zero, g, rest = ctx.init[grouped.input[1]].tolist()
    one, nil = ctx.init.get(norm.input[1]), ctx.init.get(norm.input[2])
    c = ctx.init[w].size
    if (zero, rest) != (0, -1) or one is None or nil is None or not (one == 1).all() or nil.any() or \
            ctx.init[w].shape != (c, 1, 1) or ctx.init[b].shape != (c, 1, 1):
        return None
    args = {"groups": g, **_nondefault({"eps": _f32(_attrs(norm).get("epsilon", 1e-5))}, {"eps": 1e-5})}
    ts = {"weight": ctx.init[w].reshape(-1), "bias": ctx.init[b].reshape(-1)}
    return ("groupnorm", args, ts, [grouped.input[0]]), [m, back, shape, norm, grouped]


_PATTERNS = {"Transpose": (_layernorm_map,), "Mul": (_gelu, _silu, _mish), "Pad": (_zeropad,), "Add": (_groupnorm,)}
