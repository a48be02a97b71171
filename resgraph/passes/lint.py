"""lint: warnings — legal specs that are probably not what the author meant.

- dead nodes: a node whose output reaches neither the network's output nor any other node;
- a conv with a bias right before a bn: the bn's shift makes that bias redundant (torchvision's
  ResNets use bias: false there; it also changes the parameter count);
- suspicious shortcuts: an inserted Ws that makes a likely mistake check green (see `shortcuts`).
"""
from __future__ import annotations

import math

from ..errors import Diagnostic, Diagnostics
from ..ir import Graph, Node
from ..ops import fmt


def lint(g: Graph) -> list[Diagnostic]:
    d = Diagnostics()
    users = g.users()
    live = {p for _, p in g.outputs}
    for n in reversed(g.nodes):
        if n.path in live:
            live.update(n.inputs)
    # a block instantiated n times has one source line: warn once per line, naming the instances
    dead: dict = {}
    biased: dict = {}
    for n in g.nodes[len(g.inputs):]:
        if n.path not in live and not n.inserted:
            dead.setdefault(n.loc, []).append(n)
        if n.op == "conv" and n.args.get("bias") and len(users[n.path]) == 1 and g[users[n.path][0]].op == "bn":
            biased.setdefault(n.loc, []).append(n)
    for loc, ns in dead.items():
        d.warn(loc, f"{_which(ns)} ({ns[0].op}) does not reach the output" if len(g.outputs) == 1 else
               f"{_which(ns)} ({ns[0].op}) reaches none of the outputs", "connect it with in:/from:, or remove it"
               + ("" if len(g.outputs) == 1 else " (or name it under outputs:)"))
    for loc, ns in biased.items():
        d.warn(loc, f"{_which(ns)} has a bias right before a bn, which cancels it",
               "set bias: false (for example with defaults: {conv: {bias: false}})")
    shortcuts(g, d)
    return sorted(d.warnings, key=lambda w: (w.loc.line, w.loc.col))


def shortcuts(g: Graph, d: Diagnostics) -> None:
    """Warn where an inserted Ws probably hides a mistake rather than joins a residual stage.

    For a Ws mapping [C1, H1, W1] -> [C2, H2, W2] with stride s at an add:
    - s > 2, or the main branch shrank in more than one layer: a residual stage downsamples once,
      by 2 (a `stride: $stride` copied onto every conv of a block gives s = 4 and a green check);
    - C2 < C1: a Ws that throws channels away (an add after a concat that grew them, say);
    - the add was written as `add: {from: ...}` without a `shortcut:` of its own: the Ws rule is
      the join of a `residual:`; elsewhere a shape mismatch is more often a wrong edge;
    - s = 1 and C2 != C1, where the layer that set C2 writes `out` as a number in a block's definition
      (`out: 32` for `out: $out`): a width no call asked for, which the Ws quietly absorbs (see
      `_hard_coded`; warned at that number).
    Each names both shapes and the layers on the main branch that made the difference; a block
    instantiated n times warns once per source line."""
    found: dict = {}
    for p in g.projections:
        add = g[p.at]
        shrink = _main_branch(g, add, p.edge, lambda n, x: len(x) == 3 and n.shape[1] * n.shape[2] < x[1] * x[2])
        both = f"{p.edge} {fmt(p.from_shape)} -> main branch {add.inputs[0]} {fmt(p.to_shape)}"
        if len(p.to_shape) == 3 and (p.stride > 2 or len(shrink) > 1):
            by = f"downsampled in {len(shrink)} layers: {_layers(shrink)}" if len(shrink) > 1 else \
                 f"downsampled by {_layers(shrink) or 'the main branch'}"
            found.setdefault((add.loc, "stride"), []).append(
                (add, f"the Ws at {{}} has stride {p.stride}: {both}, {by}",
                 "a residual stage downsamples once, by 2: give stride 1 to all but one layer of the block "
                 "(was a stride copied onto every conv?)" if len(shrink) > 1 else
                 f"a residual stage downsamples by 2; check the stride of {_layers(shrink) or 'the main branch'}"))
        if p.to_shape[0] < p.from_shape[0]:
            cause = _main_branch(g, add, p.edge, lambda n, x: n.shape[0] != x[0])[-1:]
            found.setdefault((add.loc, "shrink"), []).append(
                (add, f"the Ws at {{}} shrinks channels {p.from_shape[0]} -> {p.to_shape[0]}: {both}"
                      + (f", set by {_layers(cause)}" if cause else ""),
                 "a projection that drops channels is rarely meant; check the main branch's width "
                 f"({_layers(cause) or 'its last layer'}), or join with concat"))
        if add.role != "add" and add.args.get("shortcut") is None:
            found.setdefault((add.loc, "explicit"), []).append(
                (add, f"a Ws ({p.kind}) was inserted at the explicit add {{}}: {both}",
                 "a Ws belongs to the join of a residual:; if this projection is meant, say so with "
                 "add: {from: [...], shortcut: projection}, else check the add's inputs"))
        _hard_coded(g, p, add, both, found)
    for (loc, _), items in found.items():
        adds = [a for a, _, _ in items]
        _, msg, hint = items[0]
        d.warn(loc, msg.format(_which(adds)), hint)


def _hard_coded(g: Graph, p, add: Node, both: str, found: dict) -> None:
    """A Ws that neither strides nor follows a width its call asked for: the layer on the main branch
    that set the width wrote it as a number in a block's definition (settings.literal_out says where),
    so every call gets that width whatever it passes, and a stage's first copy gets a Ws for it."""
    if p.stride != 1 or p.to_shape[0] == p.from_shape[0]:
        return
    cause = _main_branch(g, add, p.edge, lambda n, x: n.shape[0] != x[0])[-1:]
    loc = cause[0].argloc.get("out") if cause else None
    block = g.settings.literal_out.get(loc)
    if block is None:
        return
    c = p.to_shape[0]
    call = f" (called at line {cause[0].calls[-1][1].line})"   # the innermost call: the block that holds it
    found.setdefault((loc, "hard-coded"), []).append(
        (add, f"'out: {c}' is written as a number in block '{block}', so the Ws at {{}}{call} maps {both} at "
              "stride 1: a width that its call did not ask for",
         f"take the width from the block's arguments (out: $out, or an expression of them) so that each call "
         f"sets it; if {c} is meant, make it an argument with that default: args: {{width: {c}}}, out: $width"))


def _main_branch(g: Graph, add: Node, edge: str, changed) -> list[Node]:
    """The layers between `edge` and the add where `changed(node, input shape)` holds, in graph order,
    walking back from the add's main input through the input that carries the map (the largest:
    through a squeeze-and-excitation `mul`, the map, not its [C, 1, 1] gate)."""
    order = {n.path: i for i, n in enumerate(g.nodes)}
    out, path = [], add.inputs[0]
    while path in order and order[path] > order.get(edge, -1) and g[path].inputs:
        n = g[path]
        x = max(n.inputs, key=lambda i: math.prod(g[i].shape))   # max() keeps the first of equals
        if changed(n, g[x].shape):
            out.append(n)
        path = x
    return out[::-1]



def _layers(nodes: list[Node]) -> str:
    def one(n: Node) -> str:
        s = n.args.get("stride")
        return f"'{n.path}' ({n.op}{f' stride {s}' if s and s > 1 else ''}, line {n.loc.line})"
    return ", ".join(one(n) for n in nodes)


def _which(nodes) -> str:
    first = f"'{nodes[0].path}'"
    return first if len(nodes) == 1 else f"{first} (and {len(nodes) - 1} more instance{'s' * (len(nodes) > 2)})"
