"""`resgraph diff A B`: two checked specs compared block by block, without torch.

The expanded graphs are aligned by path: a node at the same path in both is the same layer; it is
*changed* when its op, an argument (out, stride, kernel...), its inputs, an input's shape, its own
shape or its parameter or MAC count differs. Paths only in A are removed, only in B added. Nodes are
grouped into the units a spec's `layers:` list names (the block instance a node was called in:
layer3.6 with every node inside it, an inserted Ws with the block whose add it feeds; a layer outside
any block stands alone), or with `depth` into the first `depth` parts of their paths, as `summary
--depth` groups its rows. A unit with no node left unchanged-and-alike is listed: added, removed or
changed, with its output shape in A and B, its params and MACs in each (ops.count, the numbers
`check` adds up), the nodes that differ, and the inserted Ws (graph.projections) that appear,
vanish or change at its adds. Units that are alike in every node are not listed, so the deltas of
the listed ones add up to the difference of the two totals exactly.

Two specs whose inputs differ (names or shapes) are not two versions of one network: a SpecError
at B's input. A B that fails `check` (a change whose shapes break downstream) is reported by its
first error, the first broken edge in graph order, at B's file:line:col.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import Diagnostic, Loc, SpecError
from .ops import fmt
from .ops.count import node_macs, node_params


@dataclass(frozen=True)
class NodeDiff:
    """One node that differs: `status` added | removed | changed, and for a changed one, why."""
    path: str
    status: str
    op: str                          # B's op (A's for a removed node)
    shape_a: tuple | None
    shape_b: tuple | None
    params: tuple[int, int]          # (in A, in B): 0 where the node is absent
    macs: tuple[int, int]
    reasons: tuple[str, ...] = ()    # "out 256 -> 384", "op conv -> linear", "input [..] -> [..]"
    inserted: bool = False           # an inserted Ws node

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status, "op": self.op, "inserted": self.inserted,
                "shape_a": _list(self.shape_a), "shape_b": _list(self.shape_b),
                "params_a": self.params[0], "params_b": self.params[1], "macs_a": self.macs[0],
                "macs_b": self.macs[1], "reasons": list(self.reasons)}


@dataclass(frozen=True)
class WsDiff:
    """An inserted Ws at the add `at` that appears (only in B), vanishes (only in A) or changes."""
    at: str
    status: str                      # appears | vanishes | changes
    a: object = None                 # ir.Projection in A, or None
    b: object = None

    def text(self) -> str:
        def one(p):
            return f"{p.kind}{'' if p.bn or p.kind != 'conv1x1' else ' (no bn)'} {fmt(p.from_shape)} -> {fmt(p.to_shape)}"
        if self.status == "appears":
            return f"Ws at {self.at} appears: {one(self.b)}, {self.b.params:,} params"
        if self.status == "vanishes":
            return f"Ws at {self.at} vanishes: {one(self.a)}, {self.a.params:,} params"
        return f"Ws at {self.at} changes: {one(self.a)} -> {one(self.b)}, params {self.a.params:,} -> {self.b.params:,}"

    def to_json(self) -> dict:
        return {"at": self.at, "status": self.status, "a": self.a.to_json() if self.a else None,
                "b": self.b.to_json() if self.b else None}


@dataclass(frozen=True)
class Entry:
    """One block (or lone layer) that is added, removed or changed."""
    path: str
    status: str                      # added | removed | changed
    shape_a: tuple | None            # its output: the last node in A (None where absent)
    shape_b: tuple | None
    params: tuple[int, int]          # (in A, in B): the sums over its nodes
    macs: tuple[int, int]
    nodes: tuple[NodeDiff, ...]      # the nodes that differ, in graph order
    ws: tuple[WsDiff, ...] = ()
    size: tuple[int, int] = (0, 0)   # how many nodes it has in A and in B

    @property
    def params_delta(self) -> int:
        return self.params[1] - self.params[0]

    @property
    def macs_delta(self) -> int:
        return self.macs[1] - self.macs[0]

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status, "shape_a": _list(self.shape_a),
                "shape_b": _list(self.shape_b), "params_a": self.params[0], "params_b": self.params[1],
                "params_delta": self.params_delta, "macs_a": self.macs[0], "macs_b": self.macs[1],
                "macs_delta": self.macs_delta, "nodes_a": self.size[0], "nodes_b": self.size[1],
                "nodes": [n.to_json() for n in self.nodes], "ws": [w.to_json() for w in self.ws]}


@dataclass(frozen=True)
class SpecDiff:
    """The whole comparison: the entries in graph order (B's, removed ones where they stood in A)
    and the totals of each side, which are `check`'s."""
    a: object                        # frontend.Checked
    b: object
    entries: tuple[Entry, ...]
    params: tuple[int, int]
    macs: tuple[int, int]
    unchanged: int                   # units alike in both, not listed
    depth: int | None = None
    node_status: dict = field(default_factory=dict)   # path -> NodeDiff for every node that differs

    def to_json(self) -> dict:
        side = lambda c, i: {"file": c.spec.file, "name": c.graph.name,   # noqa: E731
                             "params": self.params[i], "macs": self.macs[i], "projections": len(c.graph.projections)}
        return {"a": side(self.a, 0), "b": side(self.b, 1), "depth": self.depth,
                "entries": [e.to_json() for e in self.entries], "unchanged": self.unchanged,
                "totals": {"params_a": self.params[0], "params_b": self.params[1],
                           "params_delta": self.params[1] - self.params[0], "macs_a": self.macs[0],
                           "macs_b": self.macs[1], "macs_delta": self.macs[1] - self.macs[0]}}


def _list(shape):
    return None if shape is None else list(shape)


def diff_files(a: str, b: str, depth: int | None = None, check=None) -> SpecDiff:
    """Check both spec files (`check`: path -> Checked, frontend.check_file by default) and compare
    them. A's errors are raised as they are; B's as its first (see `check_b`)."""
    if check is None:
        from .frontend import check_file as check
    ca = check(a)
    return diff_checked(ca, check_b(lambda: check(b)), depth)


def check_b(check):
    """B checked by `check()`; where it fails, a SpecError with only its first error, the first
    broken edge in graph order (the shapes pass orders its errors so), saying that B breaks there."""
    try:
        return check()
    except SpecError as e:
        errors = [d for d in e.diagnostics if d.severity == "error"] or e.diagnostics
        first = errors[0]
        more = f"; resgraph check lists all {len(errors)} errors" if len(errors) > 1 else ""
        d = dataclasses.replace(first, message=f"B does not check: {first.message}",
                                hint=(first.hint + more) if first.hint else more.lstrip("; "))
        raise SpecError([d], ordered=True) from None


def diff_checked(a, b, depth: int | None = None) -> SpecDiff:
    """Compare two checked specs (frontend.Checked) with the same inputs."""
    same_inputs(a, b)
    ga, gb = a.graph, b.graph
    nodes = _node_diffs(ga, gb)
    keys_a, keys_b = _keys(ga, depth), _keys(gb, depth)
    ws = _ws_diffs(ga, gb)
    units_a, units_b = _units(ga, keys_a), _units(gb, keys_b)
    entries, unchanged = [], 0
    for key in _merged(list(units_a), list(units_b)):
        in_a, in_b = units_a.get(key, []), units_b.get(key, [])
        differ = [nodes[n.path] for n in _union(in_a, in_b) if n.path in nodes]
        at = [w for w in ws if keys_b.get(w.at, keys_a.get(w.at)) == key]
        if not differ and not at and len(in_a) == len(in_b):
            unchanged += 1
            continue
        status = "added" if not in_a else "removed" if not in_b else "changed"
        entries.append(Entry(key, status, _out_shape(in_a), _out_shape(in_b),
                             (_sum(node_params, in_a, ga), _sum(node_params, in_b, gb)),
                             (_sum(node_macs, in_a, ga), _sum(node_macs, in_b, gb)),
                             tuple(differ), tuple(at), (len(in_a), len(in_b))))
    params = (_sum(node_params, ga.nodes, ga), _sum(node_params, gb.nodes, gb))
    macs = (_sum(node_macs, ga.nodes, ga), _sum(node_macs, gb.nodes, gb))
    # the listed deltas are the whole difference: every unit left out is alike in both
    assert sum(e.params_delta for e in entries) == params[1] - params[0], "diff: params deltas do not add up"
    assert sum(e.macs_delta for e in entries) == macs[1] - macs[0], "diff: MACs deltas do not add up"
    return SpecDiff(a, b, tuple(entries), params, macs, unchanged, depth, nodes)


def same_inputs(a, b) -> None:
    """A SpecError at B's input where the two specs' inputs differ in number, name or shape."""
    def inputs(c):
        return [(name, tuple(c.graph[p].shape)) for name, p in c.graph.inputs]
    ia, ib = inputs(a), inputs(b)
    if ia == ib:
        return
    show = lambda xs: ", ".join(f"{n} {fmt(s)}" for n, s in xs)  # noqa: E731
    loc = b.spec.input_loc or Loc(b.spec.file, 0, 0)
    raise SpecError([Diagnostic(
        loc, f"B's input ({show(ib)}) differs from A's ({show(ia)}, {a.spec.input_loc or a.spec.file}): "
             "a diff compares two versions of one network on the same input",
        "give B the input of A (same names and shapes); to compare networks on different inputs, "
        "compare resgraph check of each")])


def _node_diffs(ga, gb) -> dict[str, NodeDiff]:
    """Every node that differs between the graphs, by path."""
    out = {}
    for n in ga.nodes:
        if n.path not in gb:
            out[n.path] = NodeDiff(n.path, "removed", n.op, n.shape, None, (node_params(n, ga), 0),
                                   (node_macs(n, ga), 0), inserted=n.inserted)
    for m in gb.nodes:
        pm, mm = node_params(m, gb), node_macs(m, gb)
        if m.path not in ga:
            out[m.path] = NodeDiff(m.path, "added", m.op, None, m.shape, (0, pm), (0, mm), inserted=m.inserted)
            continue
        n = ga[m.path]
        pn, mn = node_params(n, ga), node_macs(n, ga)
        why = _reasons(n, m, ga, gb)
        if why or n.shape != m.shape or (pn, mn) != (pm, mm):
            out[m.path] = NodeDiff(m.path, "changed", m.op, n.shape, m.shape, (pn, pm), (mn, mm), tuple(why),
                                   m.inserted)
    return out


def _reasons(n, m, ga, gb) -> list[str]:
    """Why node `n` of A and `m` of B (one path) differ: op, arguments, inputs, input shapes. An
    edge to a node that only one side has (B reads layer1.2.post, an added block's output, where A
    read layer1.1.post) is the added or removed node's change, not this one's."""
    if n.op != m.op:
        return [f"op {n.op} -> {m.op}"]
    why = []
    for k in list(n.args) + [k for k in m.args if k not in n.args]:
        va, vb = n.args.get(k), m.args.get(k)
        if not _same_value(va, vb, ga, gb):
            why.append(f"{k} {_value(va)} -> {_value(vb)}")
    if len(n.inputs) != len(m.inputs) or not all(_same_ref(i, j, ga, gb) for i, j in zip(n.inputs, m.inputs)):
        why.append(f"inputs {', '.join(n.inputs)} -> {', '.join(m.inputs)}")
    else:
        for i, j in zip(n.inputs, m.inputs):
            if ga[i].shape != gb[j].shape:
                why.append(f"input {j} {fmt(ga[i].shape)} -> {fmt(gb[j].shape)}")
    return why


def _same_ref(x: str, y: str, ga, gb) -> bool:
    """Whether A's edge from `x` and B's from `y` are one edge: the same path, or paths that are not
    both in both graphs (B could not have read A's node, or A B's)."""
    return x == y or not (x in gb and y in ga)


def _same_value(va, vb, ga, gb) -> bool:
    """An argument alike in both: equal, or a path (`from`, `project_from`) that is one edge."""
    if va == vb:
        return True
    if isinstance(va, str) and isinstance(vb, str) and va in ga and vb in gb:
        return _same_ref(va, vb, ga, gb)
    if isinstance(va, (tuple, list)) and isinstance(vb, (tuple, list)) and len(va) == len(vb):
        return all(_same_value(x, y, ga, gb) for x, y in zip(va, vb))
    return False


def _value(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(map(str, v)) + "]"
    return "-" if v is None else str(v)


def _keys(g, depth: int | None) -> dict[str, str]:
    """The unit each node (inputs aside) is listed under: with `depth`, its path's first `depth`
    parts; else the outermost block instance that made it (calls), a Ws its add's unit, a node in
    no block its own path."""
    keys = {}
    for n in g.nodes[len(g.inputs):]:
        if depth:
            keys[n.path] = ".".join(n.path.split(".")[:depth])
        elif not n.inserted:
            keys[n.path] = n.calls[0][0] if n.calls else (n.block or n.path)
    if not depth:
        for p in g.projections:
            for path in p.nodes:
                keys[path] = keys[p.at]
        for n in g.nodes[len(g.inputs):]:   # an inserted node no projection names (none today)
            keys.setdefault(n.path, n.block or n.path)
    return keys


def _units(g, keys: dict[str, str]) -> dict[str, list]:
    """The nodes of each unit, in graph order; units in the order of their first node."""
    out: dict[str, list] = {}
    for n in g.nodes[len(g.inputs):]:
        out.setdefault(keys[n.path], []).append(n)
    return out


def _ws_diffs(ga, gb) -> list[WsDiff]:
    """The inserted Ws that differ between the graphs, by the add they sit at."""
    pa, pb = {p.at: p for p in ga.projections}, {p.at: p for p in gb.projections}
    sig = lambda p: (p.kind, p.from_shape, p.to_shape, p.stride, p.bn, p.params)  # noqa: E731
    out = []
    for at in _merged(list(pa), list(pb)):
        a, b = pa.get(at), pb.get(at)
        if a is None:
            out.append(WsDiff(at, "appears", None, b))
        elif b is None:
            out.append(WsDiff(at, "vanishes", a, None))
        elif sig(a) != sig(b) or not _same_ref(a.edge, b.edge, ga, gb):
            out.append(WsDiff(at, "changes", a, b))
    return out


def _merged(a: list[str], b: list[str]) -> list[str]:
    """B's keys in B's order, with each key only in A placed after the A key before it."""
    out = list(b)
    where = {k: i for i, k in enumerate(out)}
    anchor, inserted = -1, 0
    for k in a:
        if k in where:
            anchor, inserted = out.index(k), 0
        else:
            inserted += 1
            out.insert(anchor + inserted, k)
    return out


def _union(in_a, in_b):
    seen = {n.path for n in in_b}
    return list(in_b) + [n for n in in_a if n.path not in seen]


def _out_shape(nodes):
    body = [n for n in nodes if not n.inserted] or nodes
    return tuple(body[-1].shape) if body else None


def _sum(count, nodes, g) -> int:
    return sum(count(n, g) for n in nodes)
