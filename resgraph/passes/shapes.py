"""infer_shapes: the shape of every edge, from the op table's rules.

Pre:  resolve_ops has run (args complete and typed); nodes are in topological order.
Post: every node has `shape`. A node whose rule fails is reported with its source line (and, inside
      a block, the calls that made it); nodes that depend on it are skipped, so one mistake gives one
      error, not a cascade. Errors come in graph order, not line order: a block is defined above
      the layers that call it, and an error in its third call must not print before one in an
      earlier layer.
For `add`, the rule returns the main input's shape; what Ws makes the others match is
insert_shortcuts' business, but whether one can (`shortcuts.can_join`) is checked here: an add that
cannot join its inputs is an error in graph order like any other, and what depends on it is skipped.
Otherwise its root cause (a body that changed the size, say) would be lost behind the errors it
causes further down, which stop the run before insert_shortcuts reports it.
"""
from __future__ import annotations

from ..errors import Diagnostics
from ..ir import Graph
from ..ops import OPS, ShapeError
from .shortcuts import can_join


def infer_shapes(g: Graph) -> Graph:
    d = Diagnostics()
    shapes: dict[str, tuple | None] = {}
    nodes = []
    for n in g.nodes:
        if n.op == "input":
            shapes[n.path] = n.shape
            nodes.append(n)
            continue
        ins = [shapes.get(i) for i in n.inputs]
        shape = None
        if all(s is not None for s in ins):
            try:
                shape = tuple(OPS[n.op].shape(dict(n.args), ins))
            except ShapeError as e:
                names = {p: name for name, p in g.inputs}
                msg = e.message.format(*(names.get(i, i) for i in n.inputs)) if e.named else e.message
                d.error(n.loc, f"{n.path}: {msg}{n.site()}", e.hint, span=len(n.op))
            except Exception as e:   # a plugin's shape rule that fails other than by ShapeError
                op = OPS[n.op]
                if not op.plugin:
                    raise
                d.error(n.loc, f"{n.path}: the shape rule of op '{n.op}' (plugin {op.plugin}) raised "
                        f"{type(e).__name__}: {e}", f"a bug in {op.plugin}: report it there; a shape rule "
                        "refuses its inputs by raising resgraph.ops.ShapeError", span=len(n.op))
            if n.op == "add" and shape is not None and not can_join(d, n, shapes, g.settings.shortcut):
                shape = None
        shapes[n.path] = shape
        nodes.append(n.with_(shape=shape))
    d.raise_if_any(ordered=True)   # graph order: an error reported first is never caused by a later one
    return g.replace(nodes=tuple(nodes))
