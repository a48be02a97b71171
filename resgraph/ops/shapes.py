"""Shape rules, parameter and MAC counts of the op table's rows, and the padding and output-size
equations both back ends read.

Shapes exclude the batch dimension: [C, H, W] for feature maps, [F] for vectors.
Every rule is a pure function (args, input shapes) -> output shape that raises
ShapeError with the offending equation, in the manner of a type checker.
"""
from __future__ import annotations

import math

from ..limits import MAX_CHANNELS, MAX_ELEMENTS, MAX_SPATIAL

Shape = tuple[int, ...]
MAX_LAYER_PARAMS = 1 << 32   # 4.3e9 parameters in one layer is a typo, not a network


class ShapeError(Exception):
    """A shape rule's refusal. With `named`, the message has {0}, {1}, ... where the inputs' names go
    (the rule sees shapes only; the shapes pass knows the ids)."""

    def __init__(self, message: str, hint: str = "", named: bool = False):
        super().__init__(message)
        self.message, self.hint, self.named = message, hint, named


def fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


# --- shape helpers --------------------------------------------------------------------------

def _map(op: str, x: Shape) -> Shape:
    if len(x) != 3:
        hint = "this op works on feature maps [C, H, W]"
        raise ShapeError(f"{op} expects a feature map [C, H, W], got {fmt(x)}", hint)
    return x


def hw(v) -> tuple:
    """(height, width) of an argument that is one value for both axes (3, 'same') or a pair ([1, 7]:
    the op table keeps a square pair as its integer, a non-square one as a tuple)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def pads_hw(padding, k, d=1) -> tuple[tuple[int, int], tuple[int, int]]:
    """((begin, end) of H, (begin, end) of W): `pads` per axis, for kernels, dilations and paddings
    that may differ between the axes."""
    (ph, pw), (kh, kw), (dh, dw) = hw(padding), hw(k), hw(d)
    return pads(ph, kh, dh), pads(pw, kw, dw)


def pads(padding, k: int, d: int = 1) -> tuple[int, int]:
    """(begin, end) padding of one spatial axis, for every back end: 'same' pads d*(k-1) in total,
    begin = total // 2 and the rest at the end (an even kernel's extra one goes last, as TensorFlow's
    and ONNX's SAME_UPPER), which with any stride gives out = ceil(n / s); 'valid' 0; an int p both sides."""
    if padding == "same":
        total = d * (k - 1)
        return total // 2, total - total // 2
    p = 0 if padding == "valid" else int(padding)
    return p, p


def transpose_pads(padding, k: int, s: int, d: int, output_padding: int) -> tuple[int, int]:
    """(p, q) of a transposed conv as PyTorch and ONNX take them: the full output of one axis,
    (n-1)*s + d*(k-1) + 1, loses p at each end and gains q at the end.

    same:  out = n * s exactly. The full output is t = d*(k-1) + 1 - s longer than that, so
           p = ceil(t / 2), q = 2p - t   (t >= 0: crop one more at the begin when t is odd, as the
           transpose of a 'same' conv that pads one more at the end), or p = 0, q = -t (t < 0);
    int p: q = output_padding;   valid: p = 0.
    Both frameworks need q < max(s, d), so 'same' with an even kernel at stride 1 is refused."""
    if padding == "same":
        if output_padding:
            raise ShapeError(f"conv_transpose with padding: same and output_padding {output_padding}",
                             "'same' fixes the output at in × stride; remove output_padding, or give an integer padding")
        t = d * (k - 1) + 1 - s
        p, q = ((t + 1) // 2, 2 * ((t + 1) // 2) - t) if t >= 0 else (0, -t)
        if q >= max(s, d):
            raise ShapeError(f"conv_transpose padding: same with kernel {k}, stride {s} would crop {t} unevenly, "
                             "which PyTorch's and ONNX's ConvTranspose cannot express",
                             "use an odd kernel, or a stride of 2 or more (kernel 2 or 4 at stride 2 doubles exactly)")
        return p, q
    p = 0 if padding == "valid" else int(padding)
    if output_padding >= max(s, d):
        raise ShapeError(f"conv_transpose output_padding {output_padding} must be smaller than the stride {s} "
                         f"or the dilation {d}", "output_padding only resolves which of several sizes a strided "
                         "transposed conv gives; use 0 .. stride - 1")
    return p, output_padding


def spatial(n: int, k: int, s: int, d: int, padding, ceil_mode: bool = False) -> tuple[int, str]:
    """Output length along one axis, and the equation that produced it (for error messages).

    same:  out = ceil(n / s)                (total padding d*(k-1), begin = total // 2)
    int p: out = floor((n + 2p - d*(k-1) - 1) / s) + 1   (ceil instead of floor in ceil_mode,
           but the last window must start inside the input, as in PyTorch)
    """
    if padding == "same":
        return -(-n // s), f"ceil({n} / {s})"
    p = 0 if padding == "valid" else padding
    num = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        out = -(-num // s) + 1
        if out > 0 and (out - 1) * s >= n + p:
            out -= 1
        return out, f"ceil(({n} + 2*{p} - {d}*({k}-1) - 1) / {s}) + 1"
    return (num // s + 1 if num >= 0 else num // s + 1), f"floor(({n} + 2*{p} - {d}*({k}-1) - 1) / {s}) + 1"


def _spatial_out(op: str, a: dict, x: Shape, k, s, d, ceil_mode=False) -> tuple[int, int]:
    """Output H and W; k, s, d and the padding may each be an integer or (height, width)."""
    _, h, w = x
    out = []
    for i, (axis, n) in enumerate((("H", h), ("W", w))):
        o, eq = spatial(n, hw(k)[i], hw(s)[i], hw(d)[i], hw(a["padding"])[i], ceil_mode)
        if o < 1:
            raise ShapeError(f"{op} output {axis} collapses to {o}: {eq} = {o} for input {fmt(x)}",
                             "the input is smaller than the kernel; use padding: same, a smaller kernel or stride, "
                             "or a larger input")
        out.append(o)
    return out[0], out[1]


def _pad_ok(op: str, a: dict, k):
    for p, kk in zip(hw(a["padding"]), hw(k)):   # per axis
        if isinstance(p, int) and not isinstance(p, bool) and p > kk // 2 and op.endswith("pool"):
            raise ShapeError(f"{op} padding {p} is more than half the kernel {kk}",
                             "PyTorch and ONNX require padding <= kernel // 2 for pooling")


def _elements(shape: Shape, op: str) -> Shape:
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        raise ShapeError(f"{op} output {fmt(shape)} has {n:.2e} elements per sample",
                         f"the limit is {MAX_ELEMENTS:.1e}; check sizes and upsampling scales")
    for d in shape[1:] if len(shape) == 3 else ():
        if d > MAX_SPATIAL:
            raise ShapeError(f"{op} output {fmt(shape)} is larger than {MAX_SPATIAL} pixels per side",
                             "check upsampling scales")
    return shape


def _layer_params(op: str, n: int) -> int:
    if n > MAX_LAYER_PARAMS:
        raise ShapeError(f"{op} would have {n:.2e} parameters in one layer",
                         f"the limit is {MAX_LAYER_PARAMS:.1e}; check 'out' and the input size")
    return n


# --- rules ------------------------------------------------------------------------------------

def conv_shape(a, ins):
    c, h, w = _map("conv", ins[0])
    g = a["groups"]
    if c % g or a["out"] % g:
        raise ShapeError(f"conv groups={g} must divide both in channels {c} and out channels {a['out']}",
                         "choose groups as a common divisor, e.g. groups: 1 or groups: in channels (depthwise)")
    ho, wo = _spatial_out("conv", a, ins[0], a["kernel"], a["stride"], a["dilation"])
    _layer_params("conv", conv_params(a, ins, None))
    return _elements((a["out"], ho, wo), "conv")


def conv_params(a, ins, out):
    c = ins[0][0]
    return a["out"] * (c // a["groups"]) * math.prod(hw(a["kernel"])) + (a["out"] if a["bias"] else 0)


def conv_macs(a, ins, out):
    return math.prod(out) * (ins[0][0] // a["groups"]) * math.prod(hw(a["kernel"]))


def conv_transpose_shape(a, ins):
    c, h, w = _map("conv_transpose", ins[0])
    g, k, s, d = a["groups"], a["kernel"], a["stride"], a["dilation"]
    if c % g or a["out"] % g:
        raise ShapeError(f"conv_transpose groups={g} must divide both in channels {c} and out channels {a['out']}",
                         "choose groups as a common divisor, e.g. groups: 1")
    p, q = transpose_pads(a["padding"], k, s, d, a["output_padding"])
    out = []
    for axis, n in (("H", h), ("W", w)):
        o = (n - 1) * s - 2 * p + d * (k - 1) + q + 1
        if o < 1:
            raise ShapeError(f"conv_transpose output {axis} collapses to {o}: ({n} - 1)*{s} - 2*{p} + {d}*({k}-1) + {q} + 1"
                             f" = {o} for input {fmt(ins[0])}", "the padding crops more than the output has; lower it")
        out.append(o)
    _layer_params("conv_transpose", conv_transpose_params(a, ins, None))
    return _elements((a["out"], out[0], out[1]), "conv_transpose")


def conv_transpose_params(a, ins, out):
    return ins[0][0] * (a["out"] // a["groups"]) * a["kernel"] ** 2 + (a["out"] if a["bias"] else 0)


def conv_transpose_macs(a, ins, out):
    # every input pixel scatters a k x k kernel into out / groups channels
    return math.prod(ins[0]) * (a["out"] // a["groups"]) * a["kernel"] ** 2


def pool_shape(op):
    def rule(a, ins):
        c, _, _ = _map(op, ins[0])
        k, s = a["kernel"], a["stride"]
        _pad_ok(op, a, k)
        ho, wo = _spatial_out(op, a, ins[0], k, s, 1, a.get("ceil_mode", False))
        return (c, ho, wo)
    return rule


def unchanged(a, ins):
    return ins[0]


def bn_shape(a, ins):
    if len(ins[0]) not in (1, 3):
        raise ShapeError(f"bn expects [C, H, W] or [F], got {fmt(ins[0])}")
    return ins[0]


def linear_shape(a, ins):
    x = ins[0]
    if len(x) != 1:
        raise ShapeError(f"linear expects a vector [F], got the feature map {fmt(x)}",
                         "add flatten (or global_avgpool then flatten) before the linear layer")
    _layer_params("linear", x[0] * a["out"])
    return (a["out"],)


def linear_params(a, ins, out):
    return ins[0][0] * a["out"] + (a["out"] if a["bias"] else 0)


def flatten_shape(a, ins):
    return _elements((math.prod(ins[0]),), "flatten")


def global_pool_shape(a, ins):
    c, _, _ = _map("global_avgpool", ins[0])
    return (c, 1, 1)


def add_shape(a, ins):
    # The main input fixes the shape; insert_shortcuts makes the others match and the verifier checks it.
    return ins[0]


def concat_shape(a, ins):
    first = ins[0]
    for other in ins[1:]:
        if len(other) != len(first) or other[1:] != first[1:]:
            listed = " ++ ".join(f"{{{i}}} {fmt(s)}" for i, s in enumerate(ins))
            if len({len(s) for s in ins}) > 1:
                hint = ("a vector and a feature map cannot be joined; global_avgpool and flatten the map first, "
                        "or concatenate maps only")
            else:
                hint = ("concat does no shortcut handling and joins along channels only; bring the inputs to the "
                        "same H and W first (upsample, a pool or a strided conv)")
            raise ShapeError(f"concat needs equal shapes except channels: {listed}", hint, named=True)
    c = sum(s[0] for s in ins)
    if c > MAX_CHANNELS:
        raise ShapeError(f"concat output has {c} channels, over the limit of {MAX_CHANNELS}")
    return _elements((c,) + first[1:], "concat")


def mul_shape(a, ins):
    """numpy broadcasting over the sample's dimensions, ranks equal: a [C, 1, 1] gate scales a
    [C, H, W] map channel by channel; each dimension equal, or 1 on one side."""
    out = list(ins[0])
    for j, other in enumerate(ins[1:], start=1):
        if len(other) != len(out):
            raise ShapeError(f"mul needs inputs of one rank: {{0}} {fmt(ins[0])} * {{{j}}} {fmt(other)}",
                             "a channel gate on a map has shape [C, 1, 1] (global_avgpool, then 1x1 convs back "
                             "to C channels); on a vector, [F]", named=True)
        for axis, (x, y) in enumerate(zip(out, other)):
            if x != y and 1 not in (x, y):
                raise ShapeError(f"mul cannot broadcast {{0}} {fmt(ins[0])} with {{{j}}} {fmt(other)}: dimension "
                                 f"{axis} is {x} against {y}", "each dimension must be equal, or 1 on one side "
                                 "(a [C, 1, 1] gate over a [C, H, W] map)", named=True)
            out[axis] = max(x, y)
    return _elements(tuple(out), "mul")


def norm_shape(op):
    def rule(a, ins):
        if len(ins[0]) not in (1, 3):
            raise ShapeError(f"{op} expects [C, H, W] or [F], got {fmt(ins[0])}")
        g = a.get("groups", 1)
        if ins[0][0] % g:
            raise ShapeError(f"groupnorm groups={g} must divide the {ins[0][0]} channels",
                             "choose groups as a divisor of the channels (32 is the usual, or 1 = layer norm "
                             "over C, H, W)")
        return ins[0]
    return rule


def upsample_shape(a, ins):
    c, h, w = _map("upsample", ins[0])
    return _elements((c, h * a["scale"], w * a["scale"]), "upsample")


def project_shape(a, ins):
    x = ins[0]
    if len(x) == 1:
        if a["stride"] != 1:
            raise ShapeError(f"project on a vector {fmt(x)} cannot have stride {a['stride']}", "remove stride")
        _layer_params("project", x[0] * a["out"])
        return (a["out"],)
    c, h, w = _map("project", x)
    return (a["out"], -(-h // a["stride"]), -(-w // a["stride"]))


def project_params(a, ins, out):
    x = ins[0]
    return x[0] * a["out"] + (2 * a["out"] if len(x) == 3 else 0)


def project_macs(a, ins, out):
    return math.prod(out) * ins[0][0]


def zeropad_shape(a, ins):
    x = ins[0]
    if len(x) == 1:
        return (a["out"],)
    return (a["out"], -(-x[1] // a["stride"]), -(-x[2] // a["stride"]))


def pool_stride(a: dict) -> dict:
    """stride 0 (the default) means stride = kernel, as in PyTorch's pools (per axis: [0, 1] with
    kernel [3, 1] is [3, 1])."""
    if a.get("kernel") is None or a.get("stride") is None or 0 not in hw(a["stride"]):
        return a
    s = tuple(si or ki for si, ki in zip(hw(a["stride"]), hw(a["kernel"])))
    return {**a, "stride": s[0] if s[0] == s[1] else s}



def channel_range(op: str, a: dict, c: int) -> tuple[int, int]:
    """[begin, end) of the channels (or features) that part a["part"] of a split or chunk takes from c:
    the shape rules and both lowerings read it here."""
    if op == "chunk":
        size = c // a["chunks"]
        return a["part"] * size, (a["part"] + 1) * size
    begin = sum(a["sizes"][:a["part"]])
    return begin, begin + a["sizes"][a["part"]]


def split_shape(op: str):
    """split (sizes) and chunk (equal parts): one node per part, [C, H, W] -> [size, H, W], or on [F]."""
    def rule(a, ins):
        x = ins[0]
        if len(x) not in (1, 3):
            raise ShapeError(f"{op} expects [C, H, W] or [F], got {fmt(x)}")
        c = x[0]
        if op == "chunk" and c % a["chunks"]:
            raise ShapeError(f"chunk: {c} channels do not make {a['chunks']} equal parts",
                             "choose chunks that divide the channels, or split: {sizes: [...]} for unequal parts")
        if op == "split" and sum(a["sizes"]) != c:
            raise ShapeError(f"split sizes {list(a['sizes'])} add up to {sum(a['sizes'])}, but the input has {c} "
                             f"channels", f"make the sizes add up to {c}, or use chunk: {{chunks: N}} for equal parts")
        parts = a["chunks"] if op == "chunk" else len(a["sizes"])
        assert 0 <= a["part"] < parts, (op, a)   # the expansion makes one node per part
        b, e = channel_range(op, a, c)
        return (e - b, *x[1:])
    return rule
