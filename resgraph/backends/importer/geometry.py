"""A convolution's window as the spec writes it, from a traced module's or an ONNX node's per-axis
values: kernel, stride and dilation as an integer where both axes agree, else [height, width]
(kernel: [1, 7]); the padding as 'same' where it is exactly what 'same' pads on both axes, else
its integers. Both importers (trace.py, onnx_trace.py) read it here."""
from __future__ import annotations

from ...ops import pads
from ...ops.shapes import hw


def pair(v):
    """(h, w) as the op table keeps it: the integer when h == w."""
    h, w = hw(v)[:2]
    return int(h) if h == w else (int(h), int(w))


def nondefault(args: dict, defaults: dict) -> dict:
    """`args` without those equal to their default: what an imported spec writes."""
    return {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}


def conv_padding(begin_end: tuple, kernel: tuple, dilation: tuple):
    """The spec's padding for per-axis (begin, end) pads [(bh, eh), (bw, ew)]: 'same' where both axes
    pad as 'same' does, else the integers (symmetric per axis), or None (asymmetric, not 'same')."""
    if all(be == pads("same", k, d) for be, k, d in zip(begin_end, kernel, dilation)):
        return "same"
    if any(b != e for b, e in begin_end):
        return None
    return pair([b for b, _ in begin_end])


def conv_args(out: int, kernel, stride, dilation, begin_end, groups: int, bias: bool) -> dict | None:
    """A conv's spec arguments (those that differ from the defaults), or None where the padding has
    no spec form."""
    p = conv_padding(begin_end, hw(kernel), hw(dilation))
    if p is None:
        return None
    args = {"out": out, "kernel": pair(kernel), "stride": pair(stride), "padding": p, "dilation": pair(dilation),
            "groups": groups, "bias": bias}
    return nondefault(args, {"stride": 1, "padding": "same", "dilation": 1, "groups": 1})


def pool_args(kernel, stride, padding) -> dict:
    """A pool's spec arguments (those that differ from the defaults) from per-axis kernel, stride and
    symmetric padding: 'same' where both axes pad (k - 1) / 2 of an odd kernel and one of them pads at
    all, 'valid' for none, else the integers."""
    k, s, p = hw(kernel), hw(stride), hw(padding)
    if all(kk % 2 and pp == (kk - 1) // 2 for kk, pp in zip(k, p)) and any(p):
        pad = "same"
    else:
        pad = "valid" if not any(p) else pair(p)
    return nondefault({"kernel": pair(k), "stride": pair(s), "padding": pad}, {"stride": pair(k), "padding": "valid"})


_POOL_ARGS = {"max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
              "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")}


def functional_pool(name: str, rest: list, kw: dict):
    """(op, args) of F.max_pool2d / F.avg_pool2d called in a forward (as resgraph's own modules call
    them) from its positional and keyword arguments, or why it has no spec form."""
    a = {**dict(zip(_POOL_ARGS[name], rest)), **kw}
    k = a["kernel_size"]
    p = a.get("padding", 0)
    p = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
    avg = name == "avg_pool2d"
    if (not avg and (a.get("dilation", 1) not in (1, (1, 1)) or a.get("return_indices"))) or \
            (avg and (a.get("divisor_override") or (any(p) and a.get("count_include_pad", True)))):
        return "dilated, with indices, counting padding or with a divisor"
    args = pool_args(k, a.get("stride") or k, p)
    return ("avgpool" if avg else "maxpool"), {**args, **({"ceil_mode": True} if a.get("ceil_mode") else {})}
