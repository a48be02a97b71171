"""Initialisation policies (the spec's `init:` section).

    init:
      conv: kaiming_normal      # default, as torchvision's ResNets: N(0, 2 / fan_out), for ReLU
                                # also: kaiming_uniform (PyTorch's own default), xavier_uniform
      linear: default           # PyTorch's default (what torchvision's ResNets keep); or xavier_uniform
      zero_residual: false      # true: the last bn of every residual body starts with gamma = 0

bn layers start at gamma = 1, beta = 0. With zero_residual each residual block starts as the
identity on its (post-ReLU, non-negative) input: body(a) = beta = 0, so a[l+2] = relu(0 + a[l]) = a[l]
(Goyal et al. 2017; torchvision's zero_init_residual).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...ir import Graph
from .modules import Scale


def last_bn_of_each_residual_body(graph: Graph) -> list[str]:
    """Paths of the bn that ends each residual body (the last bn written in the body, in order)."""
    last: dict[str, str] = {}
    for n in graph.nodes:
        if n.op == "bn" and n.role == "body" and n.block:
            last[n.block] = n.path
    return list(last.values())


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
            for path in last_bn_of_each_residual_body(graph):
                nn.init.zeros_(module.get_submodule(path).weight)
    return module


def _default_bias(weight, bias):
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(bias, -bound, bound)
