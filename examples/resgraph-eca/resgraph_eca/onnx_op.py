"""The `eca` op in ONNX, built with resgraph's ONNX builder (b.op, b.param, b.const), as its own
ops are: GlobalAveragePool, a 1-D Conv across the channels, Sigmoid, Mul."""
import numpy as np

from .op import _kernel


def lower(b, n, xs):
    k = _kernel(n.args, b.ir[n.inputs[0]].shape[0])
    p = n.path
    g = b.op("GlobalAveragePool", [xs[0]], f"{p}/pool")                                   # [N, C, 1, 1]
    g = b.op("Reshape", [g, b.const(f"{p}/as_seq", [0, 1, -1], np.int64)], f"{p}/seq")   # [N, 1, C]
    g = b.op("Conv", [g, b.param(n, "conv.weight")], f"{p}/conv", kernel_shape=[k], pads=[(k - 1) // 2] * 2)
    g = b.op("Reshape", [g, b.const(f"{p}/as_map", [0, -1, 1, 1], np.int64)], f"{p}/gate_in")  # [N, C, 1, 1]
    g = b.op("Sigmoid", [g], f"{p}/gate")
    return b.op("Mul", [xs[0], g], p)
