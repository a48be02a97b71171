"""Parameter and MAC counts per node, from the op table.

params: trainable parameters (bn affine weights included, running statistics not).
macs:   multiply-accumulates of conv and linear (and of the 1x1 convs inside project), per sample.
"""
from __future__ import annotations

from .table import OPS


def node_params(node, graph) -> int:
    if node.op == "input":
        return 0
    return OPS[node.op].params(dict(node.args), [graph[i].shape for i in node.inputs], node.shape)


def node_macs(node, graph) -> int:
    if node.op == "input":
        return 0
    return OPS[node.op].macs(dict(node.args), [graph[i].shape for i in node.inputs], node.shape)


def state_dict_shapes(graph) -> dict[str, tuple]:
    """Every tensor a checkpoint of `graph` holds, name -> shape, in the order the module defines them."""
    from .table import tensors
    out = {}
    for n in graph.nodes[len(graph.inputs):]:
        for suffix, shape in tensors(n.op, dict(n.args), [graph[i].shape for i in n.inputs], n.shape).items():
            out[f"{n.path}.{suffix}"] = shape
    return out


def totals(graph) -> tuple[int, int]:
    """(params, macs) of the whole graph."""
    p = m = 0
    for n in graph.nodes:
        p += node_params(n, graph)
        m += node_macs(n, graph)
    return p, m
