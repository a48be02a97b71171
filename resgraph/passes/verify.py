"""verify: the IR's invariants, checked apart from the passes that should keep them.

A failure here is a bug in resgraph, not in the spec: it raises AssertionError, never SpecError.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import OPS


def verify(g: Graph) -> Graph:
    seen: set[str] = set()
    assert g.nodes and all(n.op == "input" for n in g.input_nodes), "the first nodes are the inputs"
    assert [n.path for n in g.input_nodes] == [p for _, p in g.inputs], "the inputs are the first nodes, in order"
    assert all(n.op != "input" for n in g.nodes[len(g.inputs):]), "no input after the first nodes"
    for n in g.nodes:
        assert n.path not in seen, f"duplicate path {n.path}"
        for i in n.inputs:
            assert i in seen, f"{n.path} reads {i} before it is defined (not topological)"
        seen.add(n.path)
        assert n.shape is not None and all(isinstance(x, int) and x > 0 for x in n.shape), f"{n.path}: shape {n.shape}"
        if n.op == "input":
            continue
        assert n.op in OPS, f"{n.path}: op {n.op} not in the table"
        op = OPS[n.op]
        assert set(n.args) == set(op.args), f"{n.path}: args {set(n.args)} != {set(op.args)}"
        ins = [g[i].shape for i in n.inputs]
        assert tuple(op.shape(dict(n.args), ins)) == n.shape, f"{n.path}: stored shape disagrees with the rule"
        if n.op == "add":
            assert all(s == n.shape for s in ins), f"{n.path}: add inputs differ {ins} after insert_shortcuts"
            assert n.args["project_from"] is None or n.args["project_from"] in seen, f"{n.path}: project_from"
        if not op.variadic:
            assert len(n.inputs) == 1, f"{n.path}: {len(n.inputs)} inputs to a single-input op"
    assert all(p in seen and g[p].op != "input" for _, p in g.outputs), "every output is a node's, not an input"
    assert len({name for name, _ in g.inputs + g.outputs}) == len(g.inputs) + len(g.outputs), "distinct io names"
    for p in g.projections:
        assert p.at in seen and all(x in seen for x in p.nodes), f"projection {p.at} refers to missing nodes"
    return g
