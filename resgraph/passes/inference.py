"""Inference-only rewrites of (graph, weights): pure functions returning a new graph and new weights.

Weights are a dict of numpy arrays keyed like a PyTorch state dict (`<node path>.weight`, ...).
Each pass states its maths, pre- and postconditions; tests/backends/onnx/test_onnx_backend.py checks each one
numerically, before vs after, on random input with non-trivial bn statistics.
"""
from __future__ import annotations

import dataclasses

from ..ir import Graph, Node, freeze
from ..ops import OPS

Weights = dict   # name -> numpy array, keyed like a PyTorch state dict (`<node path>.weight`)


def _rewire(g: Graph, removed: dict[str, str], nodes: list[Node]) -> Graph:
    """Drop the nodes in `removed` (path -> the path that now stands for its value) and point every
    reader (and the output, and the projections) at the replacement."""
    def sub(p: str) -> str:
        while p in removed:
            p = removed[p]
        return p
    kept = []
    for n in nodes:
        if n.path in removed:
            continue
        ins = tuple(sub(i) for i in n.inputs)
        pf = n.args.get("project_from")
        if ins != n.inputs or (pf is not None and sub(pf) != pf):
            args = dict(n.args)
            if "from" in args:
                args["from"] = ins[1:]
            if pf is not None:
                args["project_from"] = sub(pf)
            n = n.with_(inputs=ins, args=freeze(args))
        kept.append(n)
    projections = tuple(dataclasses.replace(p, nodes=tuple(x for x in p.nodes if x not in removed))
                        for p in g.projections)
    return g.replace(nodes=tuple(kept), projections=projections).with_outputs(sub)


def fold_batchnorm(g: Graph, weights: Weights) -> tuple[Graph, Weights]:
    """Fold every bn into the conv or linear that feeds it (the ops whose OpDef.bn_folds_into).

    With s = gamma / sqrt(running_var + eps) per output channel:
        W' = W * s   (broadcast over each output channel's weights)
        b' = (b - running_mean) * s + beta        (b = 0 for a bias-free layer)
    so that  bn(conv(x; W, b)) = conv(x; W', b')  exactly in eval mode.

    Pre:  shapes inferred; `weights` holds every tensor of the nodes involved.
    Post: no bn whose input is a conv/linear read by that bn alone; those layers have bias=True;
          the bn's tensors are gone; everything that read the bn reads the layer.
    """
    import numpy as np
    users = g.users()
    outputs = {p for _, p in g.outputs}   # a layer whose own value is an output keeps it
    w = dict(weights)
    nodes = list(g.nodes)
    index = {n.path: i for i, n in enumerate(nodes)}
    removed: dict[str, str] = {}
    for n in g.nodes:
        if n.op != "bn":
            continue
        src = g[n.inputs[0]]
        folds = src.op in OPS and OPS[src.op].bn_folds_into   # (not the input)
        if not folds or users[src.path] != [n.path] or src.path in outputs:
            continue
        gamma, beta = w.pop(f"{n.path}.weight"), w.pop(f"{n.path}.bias")
        mean, var = w.pop(f"{n.path}.running_mean"), w.pop(f"{n.path}.running_var")
        w.pop(f"{n.path}.num_batches_tracked", None)
        W = w[f"{src.path}.weight"]
        # per channel, exact; a zero variance with eps 0 gives inf, which the caller reports by tensor
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + n.args["eps"])
            b = w.get(f"{src.path}.bias")
            b = np.zeros(W.shape[0]) if b is None else b.astype(np.float64)
            w[f"{src.path}.weight"] = W * s.astype(W.dtype).reshape((-1,) + (1,) * (W.ndim - 1))
            w[f"{src.path}.bias"] = ((b - mean) * s + beta).astype(W.dtype)
        nodes[index[src.path]] = nodes[index[src.path]].with_(args=freeze({**src.args, "bias": True}))
        removed[n.path] = src.path
    return _rewire(g, removed, nodes), w


def expand_projections(g: Graph, weights: Weights) -> tuple[Graph, Weights]:
    """Write each explicit `project` on feature maps as the two nodes it stands for:

        project(x; out, stride) = bn(conv1x1(x; stride, C_in -> out, no bias))

    at `<path>.conv` and `<path>.bn` (where its tensors already live), the bn with the node's eps
    and momentum, as the PyTorch back end builds it. Then fold_batchnorm folds that bn like
    any other, and the ONNX lowering needs no second description of the op. A `project` on vectors
    (a bias-free linear) stays as it is.

    Pre:  shapes inferred.
    Post: no `project` node on maps; readers of `<path>` (and the output) read `<path>.bn`;
          the weights are unchanged.
    """
    def node(n: Node, path: str, op: str, inputs: tuple, **args) -> Node:
        return Node(path, op, freeze(OPS[op].with_defaults(**args)), inputs, n.loc, shape=n.shape,
                    inserted=n.inserted, block=n.block, role=n.role)

    nodes, removed = [], {}
    for n in g.nodes:
        if n.op != "project" or len(n.shape) == 1:
            nodes.append(n)
            continue
        conv = node(n, f"{n.path}.conv", "conv", n.inputs[:1], out=n.args["out"], kernel=1, stride=n.args["stride"],
                    padding="valid", bias=False)
        nodes += [n, conv, node(n, f"{n.path}.bn", "bn", (conv.path,), eps=n.args["eps"], momentum=n.args["momentum"])]
        removed[n.path] = f"{n.path}.bn"
    return _rewire(g, removed, nodes), dict(weights)


def drop_noops(g: Graph, weights: Weights) -> tuple[Graph, Weights]:
    """Remove the ops that are the identity at inference, y = x: those whose OpDef.inference is
    "noop" (dropout, drop_path, identity).

    Post: no such node; their readers (and the output) read their input.
    """
    removed = {n.path: n.inputs[0] for n in g.nodes if n.op in OPS and OPS[n.op].inference == "noop"}
    return _rewire(g, removed, list(g.nodes)), dict(weights)


def for_inference(g: Graph, weights: Weights, fold: bool = True) -> tuple[Graph, Weights]:
    """The inference pipeline: drop no-ops, spell out projections, then (by default) fold batch norms."""
    g, weights = drop_noops(g, weights)
    g, weights = expand_projections(g, weights)
    if fold:
        g, weights = fold_batchnorm(g, weights)
    return g, weights
