"""lint: warnings — legal specs that are probably not what the author meant.

- dead nodes: a node whose output reaches neither the network's output nor any other node;
- a conv with a bias right before a bn: the bn's shift makes that bias redundant (torchvision's
  ResNets use bias: false there; it also changes the parameter count).
"""
from __future__ import annotations

from ..errors import Diagnostic, Diagnostics
from ..ir import Graph


def lint(g: Graph) -> list[Diagnostic]:
    d = Diagnostics()
    users = g.users()
    live = {g.output}
    for n in reversed(g.nodes):
        if n.path in live:
            live.update(n.inputs)
    # a block instantiated n times has one source line: warn once per line, naming the instances
    dead: dict = {}
    biased: dict = {}
    for n in g.nodes[1:]:
        if n.path not in live and not n.inserted:
            dead.setdefault(n.loc, []).append(n)
        if n.op == "conv" and n.args.get("bias") and len(users[n.path]) == 1 and g[users[n.path][0]].op == "bn":
            biased.setdefault(n.loc, []).append(n)
    for loc, ns in dead.items():
        d.warn(loc, f"{_which(ns)} ({ns[0].op}) does not reach the output", "connect it with in:/from:, or remove it")
    for loc, ns in biased.items():
        d.warn(loc, f"{_which(ns)} has a bias right before a bn, which cancels it",
               "set bias: false (for example with defaults: {conv: {bias: false}})")
    return sorted(d.warnings, key=lambda w: (w.loc.line, w.loc.col))


def _which(nodes) -> str:
    first = f"'{nodes[0].path}'"
    return first if len(nodes) == 1 else f"{first} (and {len(nodes) - 1} more instance{'s' * (len(nodes) > 2)})"
