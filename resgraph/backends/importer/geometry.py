"""A convolution's window as the spec writes it, from a traced module's or an ONNX node's per-axis
values: kernel, stride and dilation as an integer where both axes agree, else [height, width]
(kernel: [1, 7]); the padding as 'same' where it is exactly what 'same' pads on both axes, else
its integers. Both importers (trace.py, onnx_trace.py) read it here."""
from __future__ import annotations

from ...ops import pads


def pair(v):
    """(h, w) as the op table keeps it: the integer when h == w."""
    h, w = (tuple(v) if isinstance(v, (tuple, list)) else (v, v))[:2]
    return int(h) if h == w else (int(h), int(w))


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
    k2, d2 = (tuple(v) if isinstance(v, (tuple, list)) else (v, v) for v in (kernel, dilation))
    p = conv_padding(begin_end, k2, d2)
    if p is None:
        return None
    args = {"out": out, "kernel": pair(kernel), "stride": pair(stride), "padding": p, "dilation": pair(dilation),
            "groups": groups, "bias": bias}
    defaults = {"stride": 1, "padding": "same", "dilation": 1, "groups": 1}
    return {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}
