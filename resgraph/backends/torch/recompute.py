"""Activation checkpointing per block: a lowered GraphModule whose blocks run under
torch.utils.checkpoint.checkpoint(use_reentrant=False), so a training step keeps each block's
inputs instead of everything its layers save for backward, and recomputes one block at a time in
backward.

The segments are resgraph.memory.segments (the estimate `check --memory --checkpointing` counts
the same parts): each block instance a spec's `layers:` list names, and each run of layers outside
blocks. The module is the same GraphModule with a rewritten graph: its submodules, parameters and
state-dict keys are untouched (a checkpoint loads either way), and its outputs and gradients are
the same. Each segment is a small GraphModule over the same submodules, kept outside the module
tree (a plain tuple attribute), so nothing is registered twice.

Two things checkpointing would otherwise change, and this keeps: a segment's input is never
overwritten in place (the recomputation reads it again), and bn running statistics are updated
once per step, not again by the recomputation.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from ...ir import Graph
from ...memory import segments

SEGMENTS = "_resgraph_segments"   # the attribute that holds the segments' GraphModules


def checkpointed(gm: fx.GraphModule, graph: Graph) -> fx.GraphModule:
    """`gm` (lower(graph)'s module) with each segment of `graph` run under checkpoint; returns gm,
    rewritten in place."""
    unit = _segment_of_nodes(gm, graph)
    old = list(gm.graph.nodes)
    runs: list[list[fx.Node]] = []
    for n in old:
        if n.op in ("placeholder", "output"):
            continue
        if runs and unit[runs[-1][-1]] == unit[n]:
            runs[-1].append(n)
        else:
            runs.append([n])
    new, env, subs = fx.Graph(), {}, []
    for n in old:
        if n.op == "placeholder":
            env[n] = new.node_copy(n)
    segs = new.get_attr(SEGMENTS)
    for k, run in enumerate(runs):
        sub, ins, outs = _subgraph(gm, run, old)
        subs.append(sub)
        name = unit[run[0]].replace("..", "_to_").replace(".", "_") + "_checkpointed"
        res = new.call_function(_run, (segs, k, *[env[i] for i in ins]), name=name)
        for j, o in enumerate(outs):
            env[o] = new.call_function(operator.getitem, (res, j), name=o.name)
    out = next(n for n in old if n.op == "output")
    new.output(fx.map_arg(out.args[0], lambda a: env[a]))
    object.__setattr__(gm, SEGMENTS, tuple(subs))   # not nn.Module's setattr: no submodule registered
    gm.graph = new
    gm.recompile()
    gm.meta["resgraph"]["checkpointing"] = [unit[r[0]] for r in runs]
    return gm


def _segment_of_nodes(gm: fx.GraphModule, graph: Graph) -> dict[fx.Node, str]:
    """Each fx node's segment: its IR path's; a helper node the lowering made without a path (the
    F.pad before a conv, project's conv, the partial products of a mul) goes with its first user."""
    seg_of = {p: name for name, paths in segments(graph) for p in paths}
    paths = gm.meta["resgraph"]["paths"]
    unit: dict[fx.Node, str] = {}
    for n in reversed(list(gm.graph.nodes)):
        if n.op in ("placeholder", "output"):
            continue
        p = paths.get(n.name)
        if p in seg_of:
            unit[n] = seg_of[p]
        else:
            users = [u for u in n.users if u in unit]
            assert users, f"fx node {n.name} has no IR path and no user in a segment"
            unit[n] = unit[min(users, key=_order(gm))]
    return unit


def _order(gm):
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return lambda n: index[n]


def _subgraph(gm: fx.GraphModule, run: list[fx.Node], order: list[fx.Node]):
    """One segment as a GraphModule over gm's submodules: (module, the nodes it reads from before it,
    the nodes of it read after it, in graph order)."""
    inside = set(run)
    ins = [i for i in order if i not in inside and any(u in inside for u in i.users)]
    later = set(order[order.index(run[-1]) + 1:])
    outs = [n for n in run if any(u in later for u in n.users)]
    g, env = fx.Graph(), {}
    for i in ins:
        env[i] = g.placeholder(i.name)
    for n in run:
        env[n] = g.node_copy(n, lambda a: env[a])
        _not_in_place(env[n], {env[i] for i in ins})
    g.output(tuple(env[o] for o in outs))
    return fx.GraphModule(gm, g, class_name="Segment"), ins, outs


def _not_in_place(n: fx.Node, inputs: set) -> None:
    """An in-place relu or add on a segment's input becomes its out-of-place form: checkpoint's
    recomputation reads the input again, and must find it as it was."""
    if not n.args or n.args[0] not in inputs:
        return
    if n.op == "call_function" and n.target is F.relu and n.kwargs.get("inplace"):
        n.kwargs = {**n.kwargs, "inplace": False}
    elif n.op == "call_method" and n.target == "add_":
        n.op, n.target = "call_function", operator.add


def _run(segs: tuple, k: int, *xs):
    """Segment k under checkpoint; the recomputation leaves bn running statistics as the forward
    left them."""
    seg = segs[k]
    if not torch.is_grad_enabled():
        return seg(*xs)
    calls = []

    def once(*args):
        calls.append(None)
        if len(calls) == 1:
            return seg(*args)
        with _frozen_bn(seg):
            return seg(*args)
    return checkpoint(once, *xs, use_reentrant=False)


class _frozen_bn:
    """Within: bn layers update their running statistics as usual; on exit, they are put back."""

    def __init__(self, module: nn.Module):
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [[b.clone() for b in m.buffers()] for m in self.bns]

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, saved in zip(self.bns, self.saved):
                for b, s in zip(m.buffers(), saved):
                    b.copy_(s)
