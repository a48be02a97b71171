"""A back end's per-node times (runtime/profiler.py) as rows of the spec: one per IR node, with its line.

Names to IR paths (`owner`): the ONNX lowering names each node by the IR path it lowers, or
`path/suffix` for a helper node of one; ONNX Runtime appends its own suffixes to what it rewrites
(`layer1.0.relu1_nchwc`); torch's ranges are IR paths, a projection's conv its submodule's path
(`layer1.0.shortcut.conv` of the node `layer1.0.shortcut`); TensorRT joins fused layers' names with
" + " and wraps some (`PWN(a, b)`).
So a name is cut into its parts and each part tried as a path: whole, before the first "/", without
trailing `_suffix`es, without trailing `.part`s. A name with no part that is a path is no spec line's
(ONNX Runtime's ReorderInput/ReorderOutput layout copies, TensorRT's "Reformatting CopyNode for ...
<a layer>", which copy a tensor for that layer and compute none of it): a named row of its own.

Fusion: a back end that fuses nodes reports one time for the group under one member's name. An IR
node with no time of its own is put with a neighbour that has one: a node with MACs (conv, linear)
with its only reader (ONNX Runtime names a fused Conv+Relu after the relu), any other (bn, relu,
add) with its first input's group where it is that input's only reader (a conv absorbs the residual
add and relu after it). A group's time is split among its members by their MACs (evenly where none
has any), and each member's row says what it was fused with.
"""
from __future__ import annotations

import os
import re
from statistics import median

_WRAP = re.compile(r"^(?:PWN|ForeignNode)[\s(\[{]*")
_COPY = re.compile(r"^(?:Reformatting CopyNode|Reorder(?:Input|Output)\b)")   # layout copies: no spec line's


def owners(name: str, paths: set) -> list[str]:
    """The IR paths a back end's node or layer name stands for ([] for none), in the name's order."""
    if _COPY.match(name):
        return []
    out = []
    for part in re.split(r" \+ |, ", name):
        part = _WRAP.sub("", part.strip()).strip("()[]{} ")
        p = _path(part, paths)
        if p and p not in out:
            out.append(p)
    return out


def _path(part: str, paths: set) -> str | None:
    cands = [part, part.split("/")[0]]
    for c in list(cands):
        while "_" in c:
            c = c.rsplit("_", 1)[0]
            cands.append(c)
    for c in list(cands):
        while "." in c:
            c = c.rsplit(".", 1)[0]
            cands.append(c)
    return next((c for c in cands if c in paths), None)


def groups(graph, timed: dict[str, list[str]]) -> dict[str, list[str]]:
    """group key -> its member paths in graph order: each timed name's paths (`timed`: name -> paths),
    then every untimed IR node (inputs aside) put with a neighbour's group (module docstring)."""
    from ..ops.count import node_macs
    users = graph.users()
    group: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for name, ps in timed.items():
        for p in ps:
            group.setdefault(p, name)
        members[name] = list(ps)
    nodes = [n for n in graph.nodes if n.op != "input"]
    for _ in range(len(nodes)):
        changed = False
        for n in nodes:
            if n.path in group:
                continue
            into = _neighbour(n, graph, users, group, node_macs(n, graph) > 0)
            if into is not None:
                group[n.path] = into
                members[into].append(n.path)
                changed = True
        if not changed:
            break
    order = {n.path: i for i, n in enumerate(graph.nodes)}
    for n in nodes:   # nothing timed anywhere near: a group of its own, with no time
        if n.path not in group:
            group[n.path] = n.path
            members[n.path] = [n.path]
    return {k: sorted(v, key=order.__getitem__) for k, v in members.items() if v}


def _neighbour(n, graph, users, group: dict, heavy: bool) -> str | None:
    readers = users.get(n.path, [])
    if heavy:
        return group.get(readers[0]) if len(readers) == 1 else None
    for i in n.inputs[:1] + n.inputs[1:]:
        if i in group and users.get(i) == [n.path]:
            return group[i]
    return None


def rows(graph, times: dict[str, list[float]], timed: dict[str, list[str]], batch: int) -> list[dict]:
    """One row per IR node (graph order): path, line, op, shape, MACs (of the batch), ms (median over
    the runs of its share of its group's time), fused (the ops it shares that time with), GFLOP/s."""
    from ..ops import fmt
    from ..ops.count import node_macs
    macs = {n.path: node_macs(n, graph) * batch for n in graph.nodes}
    g = groups(graph, timed)
    key_of = {p: k for k, ps in g.items() for p in ps}
    runs = len(next(iter(times.values()), [0.0]))
    ms_of: dict[str, float] = {}
    for key, ps in g.items():
        total = sum(macs[p] for p in ps)
        per_run = times.get(key, [0.0] * runs)
        for p in ps:
            ms_of[p] = median(t * (macs[p] / total if total else 1 / len(ps)) for t in per_run)
    out = []
    for n in graph.nodes:
        if n.op == "input":
            continue
        ps, ms = g[key_of[n.path]], ms_of[n.path]
        out.append({"path": n.path, "line": f"{os.path.basename(n.loc.file)}:{n.loc.line}", "op": n.op,
                    "shape": fmt(n.shape), "macs": macs[n.path], "ms": ms,
                    "fused": " + ".join(graph[p].op for p in ps) if len(ps) > 1 else None,
                    "calls": [[p, f"{os.path.basename(loc.file)}:{loc.line}"] for p, loc in n.calls],
                    "gflops": 2 * macs[n.path] / ms / 1e6 if ms > 0 and macs[n.path] else None})
    return out


def fold(rows_: list[dict], depth: int) -> list[dict]:
    """Rows whose paths share their first `depth` parts as one (summary --depth's folding): ms, MACs
    summed, the shape of the last; the line of the call that made the key's block (the stage's line for
    `layer3`, a repeat's), else the first row's."""
    out: dict[str, dict] = {}
    for r in rows_:
        key = ".".join(r["path"].split(".")[:depth])
        f = out.get(key)
        if f is None:
            line = next((ln for p, ln in r["calls"] if p == key or p.startswith(key + ".")), r["line"])
            out[key] = dict(r, path=key, line=line, members=1)
            continue
        f["members"] += 1
        f.update(ms=f["ms"] + r["ms"], macs=f["macs"] + r["macs"], shape=r["shape"], fused=None,
                 op=f"block ({f['members']} nodes)")
    for f in out.values():
        f["gflops"] = 2 * f["macs"] / f["ms"] / 1e6 if f["ms"] > 0 and f["macs"] else None
    return list(out.values())
