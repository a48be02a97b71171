"""Which input sizes a graph takes: for one spatial axis of its input, every size in a range for which
every edge matches (each add's inputs, each concat's and mul's, each flatten's fixed width, no output
collapsing to nothing), computed for all the sizes at once.

Pre:  g has its shortcuts inserted and its shapes inferred at one input size (the reference). A Ws is
      then part of the graph with the stride the reference gave it: a model is compiled once, and at
      another size its Ws still strides by that much, so an add that matched at the reference may
      not match there.
Post: axis_sizes(g, axis, sizes) is an AxisSizes: for each candidate, valid or not, the first node
      that refuses it (graph order: the root cause, not what follows from it) and why, and the
      output's length on that axis. It equals re-inferring the shapes at each size one by one
      (tests/spec/test_sizes.py holds it to that), at numpy's speed instead of Python's.

Why one axis at a time: every op acts on each spatial axis alone (a conv's H out depends on H in,
never on W), so an axis's valid sizes do not depend on the other's. Resource limits that multiply
the axes together (MAX_ELEMENTS) are not edges and are left to the shape rules at the sizes used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..ir import Graph, Node
from ..limits import MAX_SPATIAL
from ..manifest import compact  # noqa: F401  (the words for a list of sizes: check and the runtime say them alike)
from ..ops.shapes import hw, transpose_pads

if TYPE_CHECKING:   # numpy is imported where sizes are swept, not with the front end
    import numpy as np

IDENTITY = {"bn", "layernorm", "groupnorm", "scale", "drop_path", "relu", "relu6", "sigmoid", "tanh", "gelu", "silu",
            "hardswish", "hardsigmoid", "leaky_relu", "dropout", "softmax", "identity"}


@dataclass(frozen=True)
class AxisSizes:
    """Candidates `sizes` of input axis `axis` (1: H, 2: W): which are valid, where and why each of
    the others fails first, and the output's length on the axis (None: the output is a vector)."""
    axis: int
    sizes: np.ndarray
    valid: np.ndarray
    failed_at: np.ndarray            # per candidate: index into `reasons`, -1 where valid
    reasons: tuple[tuple[str, str], ...]   # (node path, why) for each distinct first failure
    output: np.ndarray | None
    outputs: dict = None             # every output's path -> its length on the axis (None: a vector)

    def why(self, size: int) -> tuple[str, str] | None:
        """(node path, why) for a candidate that fails, None for a valid one."""
        at = [int(x) for x in self.sizes].index(size)   # ValueError for a size that is not a candidate
        k = int(self.failed_at[at])
        return None if k < 0 else self.reasons[k]


class _Sweep:
    """The per-node lengths of one axis over every candidate, and the first failure of each."""

    def __init__(self, g: Graph, axis: int, sizes: np.ndarray, varying):
        import numpy as np
        self.np, self.g, self.axis, self.varying = np, g, axis, varying
        self.length: dict = {}
        self.failed_at = np.full(len(sizes), -1)
        self.reasons: list[tuple[str, str]] = []
        self.sizes = sizes

    def fail(self, n: Node, bad: np.ndarray, why: str) -> None:
        if not bad.any():
            return
        new = bad & (self.failed_at < 0)
        if new.any():
            self.failed_at[new] = len(self.reasons)
            self.reasons.append((n.path, why))

    def run(self) -> AxisSizes:
        np = self.np
        for x in self.g.input_nodes:   # the swept inputs take every candidate; the others their own length
            assert x.shape is not None and self.axis in (1, 2), x.shape
            if x.path in self.varying:
                assert len(x.shape) == 3, x.shape
                self.length[x.path] = self.sizes.astype(np.int64)
            else:
                self.length[x.path] = np.full(len(self.sizes), x.shape[self.axis], np.int64) if len(x.shape) == 3 else None
        for n in self.g.nodes[len(self.g.inputs):]:
            self.length[n.path] = self.node(n, [self.length[i] for i in n.inputs])
        outs = {p: None if self.length[p] is None else np.where(self.failed_at < 0, self.length[p], 0)
                for _, p in self.g.outputs}
        return AxisSizes(self.axis, self.sizes, self.failed_at < 0, self.failed_at, tuple(self.reasons),
                         outs[self.g.output], outs)

    def node(self, n: Node, ins: list) -> np.ndarray | None:
        np, x, a, name = self.np, ins[0], n.args, "HW"[self.axis - 1]
        if x is None:                                   # a vector: no spatial axis from here on
            return None
        if n.op in IDENTITY:
            return x
        if n.op in ("conv", "maxpool", "avgpool"):
            i = self.axis - 1   # this axis's kernel, stride, dilation and padding (each may be [height, width])
            k, s, d, p = (hw(v)[i] for v in (a["kernel"], a["stride"], a.get("dilation", 1), a["padding"]))
            if s == 1 and p == "same":   # most layers: the length as it is
                return x
            out = _window(x, k, s, d, p, a.get("ceil_mode", False))
            self.fail(n, out < 1, f"{n.op} output {name} collapses below 1 (kernel {k}, stride {s}, padding {p})")
            return out
        if n.op == "conv_transpose":
            p, q = transpose_pads(a["padding"], a["kernel"], a["stride"], a["dilation"], a["output_padding"])
            out = (x - 1) * a["stride"] - 2 * p + a["dilation"] * (a["kernel"] - 1) + q + 1
            self.fail(n, out < 1, f"conv_transpose output {name} collapses below 1")
            return out
        if n.op == "upsample":
            out = x * a["scale"]
            self.fail(n, out > MAX_SPATIAL, f"upsample output {name} is over {MAX_SPATIAL} pixels")
            return out
        if n.op in ("project", "zeropad"):
            return -(-x // a["stride"])
        if n.op == "global_avgpool":
            return np.ones_like(x)
        if n.op == "flatten":
            # what follows (a linear) was sized at the reference: only that length fits it
            ref = self.g[n.inputs[0]].shape[self.axis]
            self.fail(n, x != ref, f"flatten of a map whose {name} is not {ref}: the layer after it takes "
                                   f"{ref} only (global_avgpool takes any size)")
            return None
        if n.op in ("add", "concat"):
            for i, other in zip(n.inputs[1:], ins[1:]):
                if other is not x:
                    self.fail(n, other != x, f"{n.op} joins {name} of '{n.inputs[0]}' and '{i}', which differ")
            return x
        if n.op == "mul":
            out = x
            for i, other in zip(n.inputs[1:], ins[1:]):
                self.fail(n, (out != other) & (out != 1) & (other != 1),
                          f"mul broadcasts {name} of '{n.inputs[0]}' and '{i}', which differ (neither is 1)")
                out = np.maximum(out, other)
            return out
        raise AssertionError(f"no size rule for op '{n.op}': add it to passes/sizes.py")


def _window(n: np.ndarray, k: int, s: int, d: int, padding, ceil_mode: bool) -> np.ndarray:
    """ops.shapes.spatial over an array of lengths (the same equations)."""
    import numpy as np
    if padding == "same":
        return -(-n // s)
    p = 0 if padding == "valid" else padding
    num = n + 2 * p - d * (k - 1) - 1
    if not ceil_mode:
        return num // s + 1
    out = -(-num // s) + 1
    return np.where((out > 0) & ((out - 1) * s >= n + p), out - 1, out)


def axis_sizes(g: Graph, axis: int, sizes, varying=None) -> AxisSizes:
    """The sizes (ascending) of input axis `axis` that g takes; see the module's docstring. `varying`:
    the input paths whose axis takes the candidates (default the first input); the others keep theirs."""
    import numpy as np
    sizes = np.asarray(sizes, dtype=np.int64)
    assert sizes.ndim == 1 and (np.diff(sizes) > 0).all() and sizes.min() >= 1, "ascending sizes from 1"
    return _Sweep(g, axis, sizes, frozenset(varying) if varying is not None else {g.nodes[0].path}).run()
