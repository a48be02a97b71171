"""Training memory from the shapes alone: weights, gradients, optimizer state and the activations
autograd saves for backward, per block and in total, fp32. No torch: `check --memory` stays lean.

Which tensors a training step keeps between forward and backward is a fact of PyTorch's autograd
(each kernel's derivative formula names what it saves), not of the op: SAVES states it for every op
of the op table, as the PyTorch lowering (backends/torch/lower.py) runs it, and the test
tests/test_train_memory.py holds it equal, byte for byte, to what torch.autograd.graph's
saved_tensors_hooks see. Counting is by tensor: a value saved by two consumers (a block's output,
saved by its relu and by the next conv) counts once, and so does a view of it (flatten, identity,
a split's parts: a saved part keeps its whole input alive).

The lowering's in-place ops (a relu or an add overwriting a bn, conv, linear or add output that
nothing else reads: lower.py's _OVERWRITABLE) change which buffer a saved tensor lives in, not how
many bytes are saved: none of those ops saves its own output, so the overwritten value was never
saved. The test checks that premise against lower.py's set.

Blocks are the units a spec's `layers:` list names: the block instance a node was called in (an
inserted Ws goes with its add's), and each run of layers outside any block between them
("conv1..maxpool"). backends/torch/recompute.py checkpoints the same segments (`segments`), so
the checkpointed estimate is made of the same parts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ops import OPS
from .ops.count import node_params, state_dict_shapes
from .ops.shapes import pads_hw
from .ops.table import BUILTIN

FP32 = 4
OPTIMIZERS = {"sgd": 1, "adamw": 2}   # state tensors per parameter: SGD's momentum; AdamW's two moments
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# A saved tensor: ("in", i): the node's i-th input; ("out",): its output; ("own", per_sample, fixed, itemsize):
# one the kernel makes (statistics, indices, masks, a padded copy) of batch * per_sample + fixed elements.
# Each rule: (args, input shapes, output shape, which inputs require grad) -> the tensors saved.


def _input(a, ins, out, g):
    return [("in", 0)] if g[0] else []


def _output(a, ins, out, g):
    return [("out",)] if g[0] else []


def _nothing(a, ins, out, g):
    return []


def _padded(shape, h, w):
    """Elements of `shape` padded by h = (begin, end) rows and w = (begin, end) columns."""
    return math.prod(shape[:-2]) * (shape[-2] + sum(h)) * (shape[-1] + sum(w))


def _conv(a, ins, out, g):
    """convolution saves its input (for the weight's gradient) and weight; an asymmetric 'same'
    padding (even kernels) is an explicit F.pad before it, and the padded copy is what it saves."""
    (bh, eh), (bw, ew) = pads_hw(a["padding"], a["kernel"], a["dilation"])
    return [("in", 0)] if (bh, bw) == (eh, ew) else [("own", _padded(ins[0], (bh, eh), (bw, ew)), 0, FP32)]


def _bn(a, ins, out, g):
    """native_batch_norm: input, and the batch's mean and inverse std ([C] each)."""
    return [("in", 0), ("own", 0, 2 * ins[0][0], FP32)]


def _layernorm(a, ins, out, g):
    """native_layer_norm: input, and a mean and rstd per normalised row (per pixel on [C, H, W])."""
    return [("in", 0), ("own", 2 * math.prod(ins[0][1:]) if len(ins[0]) == 3 else 2, 0, FP32)]


def _groupnorm(a, ins, out, g):
    """native_group_norm: input, and a mean and rstd per sample and group."""
    return [("in", 0), ("own", 2 * a["groups"], 0, FP32)]


def _drop_path(a, ins, out, g):
    """x * mask / keep with a [N, 1, 1, 1] mask: mul saves the mask (x needs no saving: the mask
    needs no gradient); p = 0 returns x itself, p = 1 multiplies by 0.0."""
    return [("own", 1, 0, FP32)] if g[0] and 0 < a["p"] < 1 else []


def _dropout(a, ins, out, g):
    """On the CPU, dropout multiplies by a float noise tensor of the input's size and mul saves it
    (CUDA's fused kernel saves a bool mask: a quarter of this); p = 0 returns x itself."""
    return [("own", math.prod(ins[0]), 0, FP32)] if g[0] and 0 < a["p"] < 1 else []


def _mul(a, ins, out, g):
    """acc * x, left to right: mul saves each operand when the other one requires grad (the first
    product's left operand is input 0, a later one the running product)."""
    saved, acc = [], g[0]
    for i in range(1, len(ins)):
        if g[i]:
            saved.append(("in", 0) if i == 1 else ("own", math.prod(_broadcast(ins[:i])), 0, FP32))
        if acc:
            saved.append(("in", i))
        acc = acc or g[i]
    return saved


def _broadcast(shapes):
    n = max(len(s) for s in shapes)
    padded = [(1,) * (n - len(s)) + tuple(s) for s in shapes]
    return tuple(max(d) for d in zip(*padded))


def _pool(kind):
    def rule(a, ins, out, g):
        """max_pool2d saves its input and int64 indices of its output's size; avg_pool2d its input.
        An asymmetric padding pads first (that copy is saved); avgpool then divides by a
        [1, h, w] count, which div saves."""
        if not g[0]:
            return []
        h, w = pads_hw(a["padding"], a["kernel"])
        even = h[0] == h[1] and w[0] == w[1]
        x = [("in", 0)] if even else [("own", _padded(ins[0], h, w), 0, FP32)]
        if kind == "maxpool":
            return x + [("own", math.prod(out), 0, 8)]
        return x + ([] if even else [("own", math.prod(out[1:]), 0, FP32)])
    return rule


def _project(a, ins, out, g):
    """conv1x1 + bn: the conv saves the input, the bn the conv's output and its statistics; on
    vectors, a linear that saves its input."""
    if len(ins[0]) == 1:
        return [("in", 0)]
    return [("in", 0), ("own", math.prod(out), 2 * out[0], FP32)]


# What autograd saves for each op, as lower.py lowers it (PyTorch's derivatives.yaml; weights aside,
# which are counted as weights). relu, sigmoid, tanh and softmax save their OUTPUT; the other
# activations their input.
SAVES = {
    "conv": _conv, "conv_transpose": lambda a, i, o, g: [("in", 0)], "linear": lambda a, i, o, g: [("in", 0)],
    "bn": _bn, "layernorm": _layernorm, "groupnorm": _groupnorm,
    "scale": lambda a, i, o, g: [("in", 0)], "prelu": lambda a, i, o, g: [("in", 0)],
    "drop_path": _drop_path, "dropout": _dropout, "mul": _mul, "project": _project,
    "relu": _output, "sigmoid": _output, "tanh": _output, "softmax": _output,
    "relu6": _input, "gelu": _input, "silu": _input, "hardswish": _input, "hardsigmoid": _input,
    "mish": _input, "leaky_relu": _input,
    "maxpool": _pool("maxpool"), "avgpool": _pool("avgpool"),
    "global_avgpool": _nothing, "flatten": _nothing, "add": _nothing, "concat": _nothing,
    "upsample": _nothing, "identity": _nothing, "zeropad": _nothing, "split": _nothing, "chunk": _nothing,
}
# ops whose output is their input's tensor (a view, or the input itself): one tensor, counted once,
# and whole: a saved part of a split (a narrow view) keeps all of its input
_ALIAS = {"flatten": lambda a: True, "identity": lambda a: True, "drop_path": lambda a: a["p"] == 0,
          "dropout": lambda a: a["p"] == 0, "split": lambda a: True, "chunk": lambda a: True}
assert set(SAVES) == set(BUILTIN), ("memory.SAVES needs one entry per op of the op table",
                                    sorted(set(BUILTIN) ^ set(SAVES)))


def _assumed(a, ins, out, g):
    """A plugin's op, whose kernels the table does not know: assumed to save every input that
    requires grad and its output (an upper bound for most layers); the estimate says so."""
    return [("in", i) for i in range(len(ins)) if g[i]] + ([("out",)] if any(g) else [])


@dataclass(frozen=True)
class BlockMemory:
    """One block (or run of layers outside blocks): its parameters and the bytes it keeps."""
    name: str
    paths: tuple[str, ...]           # its nodes, in graph order
    params: int                      # trainable parameters
    activations: int                 # bytes saved for backward that this block saves first
    inputs: int                      # bytes of the tensors that enter it (what checkpointing keeps)

    def to_json(self) -> dict:
        return {"name": self.name, "params": self.params, "activations": self.activations, "inputs": self.inputs}


@dataclass(frozen=True)
class TrainingMemory:
    """The estimate for one training step at `batch`, fp32, in bytes."""
    batch: int
    optimizer: str
    weights: int                     # parameters and buffers (bn running statistics)
    gradients: int                   # one per trainable parameter
    optimizer_state: int
    activations: int                 # saved for backward, at the end of forward
    blocks: tuple[BlockMemory, ...]
    assumed: tuple[str, ...]         # plugin ops whose saved tensors are assumed (_assumed), not known
    kept: int                        # the distinct tensors that enter blocks: what per-block checkpointing keeps

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    @property
    def checkpointed_activations(self) -> int:
        """Per-block checkpointing: every block's inputs kept, plus the largest block's own
        activations while its backward recomputes them."""
        return self.kept + max((b.activations for b in self.blocks), default=0)

    def to_json(self, checkpointing: bool = True) -> dict:
        j = {"batch": self.batch, "optimizer": self.optimizer, "dtype": "float32", "weights": self.weights,
             "gradients": self.gradients, "optimizer_state": self.optimizer_state,
             "activations": self.activations, "total": self.total, "assumed": list(self.assumed),
             "blocks": [b.to_json() for b in self.blocks]}
        if checkpointing:
            j |= {"checkpointed_activations": self.checkpointed_activations,
                  "checkpointed_total": self.total - self.activations + self.checkpointed_activations}
        return j


def training_memory(graph, batch: int, optimizer: str = "sgd") -> TrainingMemory:
    """The estimate for `graph` (a checked Graph) at `batch` samples with `optimizer` (OPTIMIZERS)."""
    assert batch >= 1 and optimizer in OPTIMIZERS, (batch, optimizer)
    params = sum(node_params(n, graph) for n in graph.nodes)
    weights = sum(_bytes(k, s) for k, s in state_dict_shapes(graph).items())
    saved = saved_tensors(graph, batch)
    segs = segments(graph)
    first = {}
    for (path, _), (root, nbytes) in saved.items():
        first.setdefault(root, (path, nbytes))
    block_of = {p: name for name, paths in segs for p in paths}
    acts: dict[str, int] = {}
    for path, nbytes in first.values():
        acts[block_of[path]] = acts.get(block_of[path], 0) + nbytes
    blocks = tuple(BlockMemory(name, tuple(paths), sum(node_params(graph[p], graph) for p in paths),
                               acts.get(name, 0), _inputs_bytes(graph, paths, batch)) for name, paths in segs)
    return TrainingMemory(batch, optimizer, weights, params * FP32, OPTIMIZERS[optimizer] * params * FP32,
                          sum(b.activations for b in blocks), blocks,
                          tuple(sorted({n.op for n in graph.nodes if n.op in OPS and n.op not in SAVES})),
                          _kept_bytes(graph, segs, batch))


def _bytes(key: str, shape) -> int:
    return math.prod(shape) * (8 if key.endswith("num_batches_tracked") else FP32)


def saved_tensors(graph, batch: int) -> dict[tuple, tuple]:
    """Every tensor autograd saves in one forward at `batch`: (saving node's path, index) -> (the
    tensor's identity, bytes), in graph order. The identity is the root value's path for inputs
    and outputs (so one tensor saved twice is seen as one) and the key itself for a kernel's own."""
    root = {}
    grad = {}
    out = {}
    for n in graph.nodes:
        if n.op == "input":
            root[n.path], grad[n.path] = n.path, False
            continue
        a, ins = dict(n.args), [graph[i].shape for i in n.inputs]
        alias = _ALIAS.get(n.op)
        root[n.path] = root[n.inputs[0]] if alias and alias(a) else n.path
        g = [grad[i] for i in n.inputs]
        grad[n.path] = any(g) or node_params(n, graph) > 0
        for k, item in enumerate(SAVES.get(n.op, _assumed)(a, ins, n.shape, g)):
            if item[0] == "own":
                out[(n.path, k)] = ((n.path, k), (batch * item[1] + item[2]) * item[3])
            else:
                r = root[n.inputs[item[1]] if item[0] == "in" else n.path]
                out[(n.path, k)] = (r, batch * math.prod(graph[r].shape) * FP32)
    return out


def segments(graph) -> list[tuple[str, list[str]]]:
    """The graph's nodes (inputs aside) as contiguous runs of one block each, in graph order:
    (name, paths). A node's block is the outermost block instance that made it (or residual block
    it sits in); an inserted Ws belongs to its add's; a run of nodes outside blocks is named
    "first..last"."""
    blocks = {n.block for n in graph.nodes if n.block}
    unit = {}
    for n in graph.nodes[len(graph.inputs):]:
        if not n.inserted:
            unit[n.path] = n.calls[0][0] if n.calls else _outermost(n.block, blocks)
    for p in graph.projections:
        for path in p.nodes:
            unit[path] = unit[p.at]
    runs: list[tuple[str | None, list[str]]] = []
    for n in graph.nodes[len(graph.inputs):]:
        u = unit.get(n.path, _outermost(n.block, blocks))
        if runs and runs[-1][0] == u:
            runs[-1][1].append(n.path)
        else:
            runs.append((u, [n.path]))
    return [(u or (ps[0] if len(ps) == 1 else f"{ps[0]}..{ps[-1]}"), ps) for u, ps in runs]


def _outermost(block: str, blocks: set[str]) -> str | None:
    """The outermost residual block (a spec's inline `residual:`) that `block` sits in; None for ""."""
    parts = block.split(".") if block else []
    return next((p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in blocks), None)


def _kept_bytes(graph, segs, batch: int) -> int:
    """The bytes of every value some segment reads from before it, each once."""
    entering = set().union(*(_entering(graph, paths) for _, paths in segs))
    return sum(batch * math.prod(graph[i].shape) * FP32 for i in entering)


def _inputs_bytes(graph, paths: list[str], batch: int) -> int:
    """The bytes of the values a segment reads from before it (what a checkpoint of it keeps)."""
    return sum(batch * math.prod(graph[i].shape) * FP32 for i in _entering(graph, paths))


def _entering(graph, paths: list[str]) -> set[str]:
    inside = set(paths)
    return {i for p in paths for i in graph[p].inputs if i not in inside}
