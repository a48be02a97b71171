"""Initialisation policies (the spec's `init:` section).

    init:
      conv: kaiming_normal      # default, as torchvision's ResNets: N(0, 2 / fan_out), for ReLU
                                # also: kaiming_uniform (PyTorch's own default), xavier_uniform
      linear: default           # PyTorch's default (what torchvision's ResNets keep); or xavier_uniform
      zero_residual: false      # true: the last norm or layer scale of every residual body starts at 0

Norm layers (bn, layernorm, groupnorm) start at weight 1, bias 0; a `scale` at its `init`. With
zero_residual each residual block starts as its shortcut, a[l+2] = post(0 + Ws a[l]): the identity
where no Ws is inserted (Goyal et al. 2017; torchvision's zero_init_residual, timm's zero_init_last).
Which layer is zeroed: see zero_residual_layers. Which policy an op's parameters take, which ops
zero_residual may zero and which keep a zero a zero are facts of the op table (OpDef.init, .zeroable,
.keeps_zero), not lists here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...ir import Graph
from ...ops import OPS


def _keeps_zero(n) -> bool:
    """Whether node `n` maps a zero to exactly 0 at initialisation (its op's keeps_zero; mul: 0 if any
    input is 0; add and concat are not, unless every input is)."""
    return OPS[n.op].zero_in_zero_out(n.args)


def zero_residual_layers(graph: Graph) -> list[tuple[str, bool]]:
    """(path, exact) of the layer that `zero_residual` zeroes in each residual body, in graph order.

    The layer is the last norm (bn, layernorm, groupnorm) or layer scale (`scale`) on the body's path
    to the add, found by walking back from the add's body input:
      - the walk stops at the first norm or scale of the body it meets: a layer scale after the last
        norm (ConvNeXt) is zeroed, not the norm before it;
      - at a mul (a squeeze-and-excitation gate: x * sigmoid(f(x))) it takes the input that a single
        zero reaches, the gated features, not the gate: SE-ResNet's bn before its SE is zeroed, as
        timm's zero_init_last does (bn3 in Bottleneck, bn2 in BasicBlock, SE or not; torchvision's
        zero_init_residual zeroes the same bn3 / bn2 of its plain ResNets);
      - where several paths lead to such a layer, the one that needs the fewest other layers to map
        0 to 0 wins, then the latest written.
    `exact` is True when every op from that layer to the add keeps a zero a zero, so the body starts
    at exactly 0 and the block computes exactly post(Ws a); False when one does not (a conv with a
    bias, a sigmoid, an add or concat on the way): the layer is still zeroed, as the last bn of such
    a body always was, but the body starts near 0, not at it. Norms and scales inside a nested
    residual block belong to that block. Bodies without a norm or scale are left as they are.
    """
    index = {n.path: i for i, n in enumerate(graph.nodes)}
    out = []
    for add in graph.nodes:
        if add.op != "add" or add.role != "add" or not add.block:
            continue
        found = _last_zeroable(graph, index, add)
        if found is not None:
            out.append(found)
    return out


def _last_zeroable(graph: Graph, index: dict[str, int], add) -> tuple[str, bool] | None:
    block, prefix = add.block, add.block + "."
    # the body's nodes the add's body input depends on (iterative: a body may be long)
    seen, stack = set(), [add.inputs[0]]
    while stack:
        p = stack.pop()
        if p in seen or not p.startswith(prefix) or index[p] >= index[add.path]:
            continue
        seen.add(p)
        n = graph[p]
        if not (OPS[n.op].zeroable and n.block == block and n.role == "body"):
            stack.extend(n.inputs)
    # best[p]: (fewest ops that do not keep 0 on the way, latest written) zeroable layer behind p
    best: dict[str, tuple[int, int, str]] = {}
    for p in sorted(seen, key=index.__getitem__):
        n = graph[p]
        if OPS[n.op].zeroable and n.block == block and n.role == "body":
            best[p] = (0, index[p], p)
            continue
        ins = [best[i] for i in n.inputs if i in best]
        if not ins:
            continue
        # the input a zero reaches with the fewest misses: for an op that keeps zero (mul: any one input
        # zeroes it) that is the output's count; add and concat need every input at 0, so they miss
        b = min(ins, key=lambda t: (t[0], -t[1]))
        best[p] = b if _keeps_zero(n) else (b[0] + 1, b[1], b[2])
    b = best.get(add.inputs[0])
    return None if b is None else (b[2], b[0] == 0)


def last_bn_of_each_residual_body(graph: Graph) -> list[str]:
    """The paths zero_residual zeroes: the last norm or layer scale of each residual body (the old
    name, from when only bn counted; kept for callers)."""
    return [p for p, _ in zero_residual_layers(graph)]


@torch.no_grad()
def init_weights(module: nn.Module, graph: Graph, seed: int | None = None, policy: dict | None = None) -> nn.Module:
    """Initialise `module` (from to_torch) in place, deterministically when `seed` is given."""
    policy = {**graph.settings.init, **(policy or {})}
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for name, m in module.named_modules():
            kind = policy_of(graph, name)
            if kind is not None:
                _INIT[kind](m, policy)
        if policy.get("zero_residual"):
            for path, _ in zero_residual_layers(graph):
                nn.init.zeros_(module.get_submodule(path).weight)   # a norm's weight, or a scale's
    return module


def _default_bias(weight, bias):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(bias, -bound, bound)


def policy_of(graph: Graph, name: str) -> str | None:
    """The init policy (OpDef.init) of the module at `name`: its node's op's; a part of a node (an
    explicit Ws's conv and bn, at <path>.conv and <path>.bn) takes "parts" from its owner; containers none."""
    if name in graph:
        op = OPS.get(graph[name].op)
        return op.init if op is not None else None
    owner = name.rpartition(".")[0]
    op = OPS.get(graph[owner].op) if owner in graph else None
    return "parts" if op is not None and op.init == "parts" else None


def _conv(m, policy: dict) -> None:
    """conv and conv_transpose alike."""
    kind = policy.get("conv", "kaiming_normal")
    if kind == "kaiming_normal":
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif kind == "xavier_uniform":
        nn.init.xavier_uniform_(m.weight)
    else:
        nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
    if m.bias is not None:
        _default_bias(m.weight, m.bias)


def _linear(m, policy: dict) -> None:
    if policy.get("linear", "default") == "xavier_uniform":
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        m.reset_parameters()


def _norm(m, policy: dict) -> None:
    """bn, layernorm, groupnorm: weight 1, bias 0; a bn's running statistics reset too."""
    nn.init.ones_(m.weight)
    nn.init.zeros_(m.bias)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.reset_running_stats()


def _scale(m, policy: dict) -> None:
    m.reset_parameters()   # its `init` value


def _parts(m, policy: dict) -> None:
    """An explicit Ws (project): its 1x1 conv, its bn, or (on vectors) its bias-free linear, each as
    that op; the container that holds the conv and bn has nothing of its own."""
    for cls, fn in ((nn.Conv2d, _conv), (nn.modules.batchnorm._BatchNorm, _norm), (nn.Linear, _linear)):
        if isinstance(m, cls):
            fn(m, policy)


def _module(m, policy: dict) -> None:
    """A plugin op's module: reset_parameters of it and of every submodule that has one, as PyTorch
    initialises them (seeded with the rest)."""
    for sub in m.modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()


_INIT = {"conv": _conv, "linear": _linear, "norm": _norm, "scale": _scale, "parts": _parts, "module": _module}
# every policy the op table names has its function here
assert {op.init for op in OPS.values()} - {None} <= set(_INIT), {op.init for op in OPS.values()} - set(_INIT)
