"""Pairing two models' tensors, in execution order, by what they are rather than what they are called.

Tensor i of ours takes tensor i of theirs when both are the same kind of entry (weight, bias,
running_mean, running_var, num_batches_tracked), of the same shape, owned by the same kind of layer
(conv, bn, linear) that computes the same way where the shape does not say it (a conv's stride,
dilation and groups; a bn's eps). Names never matter, so any spec of the source's architecture
imports, whatever its ids. Pure functions of the two models and their ordered keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Mismatch:
    index: int            # position in execution order
    problem: str          # what differs, e.g. "shapes differ", "a conv vs a bn", "conv with stride 1 vs stride 2"
    ours: str | None      # our key (None: ours has ended)
    theirs: str | None    # their key (None: theirs has ended)


def first_mismatch(ours: nn.Module, our_keys, theirs: nn.Module, their_keys) -> Mismatch | None:
    """The first position where the two ordered key lists disagree, or None if every pair fits."""
    a_state, b_state = ours.state_dict(), theirs.state_dict()
    for i in range(max(len(our_keys), len(their_keys))):
        a = our_keys[i] if i < len(our_keys) else None
        b = their_keys[i] if i < len(their_keys) else None
        problem = pair_problem(ours, a, a_state.get(a), theirs, b, b_state.get(b))
        if problem:
            return Mismatch(i, problem, a, b)
    return None


def pair_problem(ours: nn.Module, a: str | None, ta, theirs: nn.Module, b: str | None, tb) -> str:
    """Why tensor `a` of ours cannot take tensor `b` of theirs ("" if it can)."""
    if a is None:
        return "ours has fewer tensors"
    if b is None:
        return "ours has more tensors"
    ka, kb = a.rpartition(".")[2], b.rpartition(".")[2]
    if ka != kb:
        return f"{ka} vs {kb}"
    if ka not in KINDS:
        return f"unknown kind of entry '{ka}'"
    ma, mb = owner(ours, a), owner(theirs, b)
    la, lb = layer_kind(ma), layer_kind(mb)
    if la != lb:
        return f"a {la} vs a {lb}"
    if tuple(ta.shape) != tuple(tb.shape):
        return "shapes differ"
    xa, xb = layer_attrs(ma), layer_attrs(mb)
    if xa != xb:
        diff = [k for k in xa if xa[k] != xb.get(k)]
        return f"{la} with " + ", ".join(f"{k} {_fmt(xa[k])} vs {k} {_fmt(xb.get(k))}" for k in diff)
    return ""


def owner(root: nn.Module, key: str) -> nn.Module | None:
    prefix = key.rpartition(".")[0]
    try:
        return root.get_submodule(prefix) if prefix else root
    except AttributeError:
        return None


def layer_kind(module: nn.Module | None) -> str:
    if module is None:
        return "?"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):   # timm's BatchNormAct2d too
        return "bn"
    if isinstance(module, nn.Linear):
        return "linear"
    return type(module).__name__


def layer_attrs(module: nn.Module | None) -> dict:
    """What a tensor's shape does not say about its layer but the computation depends on. (Padding is
    left out: 'same' padding is spelt many ways; the verify step compares outputs.)"""
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"stride": tuple(module.stride), "dilation": tuple(module.dilation), "groups": module.groups}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return {"eps": module.eps}
    return {}


def describe(root: nn.Module, key: str | None, t: torch.Tensor | None) -> str:
    """'layer2.0.conv1.weight [128, 64, 3, 3] of a conv', for messages."""
    if key is None or t is None:
        return "nothing (it has no more tensors)"
    return f"{key} {list(t.shape)} of a {layer_kind(owner(root, key))}"


def layer_mapping(pairs) -> dict[str, str]:
    """Our layer path -> theirs, in order (e.g. layer2.0.shortcut.conv -> layer2.0.downsample.0)."""
    mapping: dict[str, str] = {}
    for a, b in pairs:
        mapping.setdefault(a.rpartition(".")[0], b.rpartition(".")[0])
    return mapping


def _fmt(v) -> str:
    return str(v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v)
