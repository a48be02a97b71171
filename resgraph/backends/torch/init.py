"""Initialisation policies (the spec's `init:` section).

    init:
      conv: kaiming_normal      # default, as torchvision's ResNets: N(0, 2 / fan_out), for ReLU
                                # also: kaiming_uniform (PyTorch's own default), xavier_uniform
      linear: default           # PyTorch's default (what torchvision's ResNets keep); or xavier_uniform
      zero_residual: false      # true: the last norm or layer scale of every residual body starts at 0

Norm layers (bn, layernorm, groupnorm) start at weight 1, bias 0; a `scale` at its `init`. With
zero_residual each residual block starts as its shortcut, a[l+2] = post(0 + Ws a[l]): the identity
where no Ws is inserted (Goyal et al. 2017; torchvision's zero_init_residual, timm's zero_init_last).
Which layer is zeroed: see zero_residual_layers.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...ir import Graph
from .modules import Scale

NORMS = frozenset({"bn", "layernorm", "groupnorm"})
ZEROABLE = NORMS | {"scale"}    # zeroing the weight makes the output its bias: 0 at initialisation
# Ops whose output is exactly 0 wherever their (only, or main) input is 0, at initialisation: f(0) = 0
# activations, pools (padding is never averaged; max-pool padding is -inf), shape ops, dropout and
# drop_path (0 * mask), a norm or scale nested deeper (its bias is 0) and an explicit Ws (conv without
# bias, then bn). conv, conv_transpose and linear keep 0 only without a bias (see _keeps_zero).
KEEPS_ZERO = frozenset({"relu", "relu6", "leaky_relu", "tanh", "gelu", "silu", "hardswish", "dropout", "drop_path",
                        "identity", "flatten", "maxpool", "avgpool", "global_avgpool", "upsample", "zeropad",
                        "project"}) | ZEROABLE
# sigmoid, hardsigmoid and softmax map 0 elsewhere; add and concat are 0 only where all their inputs are


def _keeps_zero(n) -> bool:
    if n.op in ("conv", "conv_transpose", "linear"):
        return not n.args.get("bias", True)
    return n.op in KEEPS_ZERO


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
        if not (n.op in ZEROABLE and n.block == block and n.role == "body"):
            stack.extend(n.inputs)
    # best[p]: (fewest ops that do not keep 0 on the way, latest written) zeroable layer behind p
    best: dict[str, tuple[int, int, str]] = {}
    for p in sorted(seen, key=index.__getitem__):
        n = graph[p]
        if n.op in ZEROABLE and n.block == block and n.role == "body":
            best[p] = (0, index[p], p)
            continue
        ins = [best[i] for i in n.inputs if i in best]
        if not ins:
            continue
        if n.op == "mul":              # 0 if any input is 0
            b = min(ins, key=lambda t: (t[0], -t[1]))
        elif len(n.inputs) > 1:        # add, concat: 0 only if every input is
            b = min(ins, key=lambda t: (t[0], -t[1]))
            b = (b[0] + 1, b[1], b[2])
        else:
            b = ins[0] if _keeps_zero(n) else (ins[0][0] + 1, ins[0][1], ins[0][2])
        best[p] = b
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
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):   # the same policy for both
                kind = policy.get("conv", "kaiming_normal")
                if kind == "kaiming_normal":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif kind == "xavier_uniform":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                if m.bias is not None:
                    _default_bias(m.weight, m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):   # LayerNorm2d too
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, Scale):
                m.reset_parameters()   # its `init` value
            elif isinstance(m, nn.Linear):
                if policy.get("linear", "default") == "xavier_uniform":
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
        if policy.get("zero_residual"):
            for path, _ in zero_residual_layers(graph):
                nn.init.zeros_(module.get_submodule(path).weight)   # a norm's weight, or a scale's
    return module


def _default_bias(weight, bias):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(bias, -bound, bound)
