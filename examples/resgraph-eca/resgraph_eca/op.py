"""The `eca` op's row: arguments, shape rule, counts, facts. Imports resgraph.ops only.

ECA gates each channel by sigmoid(conv1d(gap(x))): a 1-D convolution of `kernel` taps across the
channel axis of the globally pooled features, no bias, no dimensionality reduction. Its kernel,
unless given, is the paper's adaptive size k = |log2(C) / 2 + 1 / 2|, made odd.
"""
import math

from resgraph.ops import Int, OpDef, ShapeError


def kernel_for(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size (eq. 12): the nearest odd number to log2(C) / gamma + b / gamma."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


def _kernel(a: dict, c: int) -> int:
    return a["kernel"] or kernel_for(c)


def shape(a: dict, ins: list) -> tuple:
    x = ins[0]
    if len(x) != 3:
        raise ShapeError(f"eca gates the channels of a [C, H, W] map, got [{', '.join(map(str, x))}]",
                         "put eca after a conv, before the residual add")
    if a["kernel"] % 2 == 0 and a["kernel"]:
        raise ShapeError(f"eca kernel {a['kernel']} is even: the gate would shift channels",
                         "use an odd kernel (3, 5, 7) or 0 for the adaptive size")
    return x


def weights(a: dict, ins: list, out: tuple) -> dict:
    return {"conv.weight": (1, 1, _kernel(a, ins[0][0]))}


ECA = OpDef(
    "eca", {"kernel": Int(0, lo=0, hi=31, doc="taps of the 1-D conv across channels; 0: ECA-Net's adaptive size")},
    shape,
    params=lambda a, ins, out: _kernel(a, ins[0][0]),
    macs=lambda a, ins, out: ins[0][0] * _kernel(a, ins[0][0]) + ins[0][0] * ins[0][1] * ins[0][2],
    doc="efficient channel attention: x * sigmoid(conv1d(global_avgpool(x))) across channels (Wang et al. 2020)",
    weights=weights, torch="resgraph_eca.torch_op:build", onnx="resgraph_eca.onnx_op:lower",
    keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init="module", import_kind=None,
    aliases=("eca_layer", "ecalayer"),
)
