"""Locating through ONNX Runtime's own graph optimisations.

Exposing every tensor keeps ONNX Runtime from fusing across it (a node whose output is a graph output
is not fused into the next), so the exposed run can agree at every node while the folder's own model,
fused, does not. Example: an fp16 folder compiled with --no-fold keeps each bn; ONNX Runtime's CPU
provider folds it into the conv itself, in fp16, and a large gamma / sqrt(var + eps) overflows to inf
there, which no exposed tensor shows. Then the graph is cut after a candidate node (its ancestors
alone, that node the one output) and run as ONNX Runtime optimises it: a bisection in graph order
over the failing output's ancestors, then a walk to a failing input until every input agrees.
"""
from __future__ import annotations

from .judge import Row, accumulate, half_of, verdict
from .sides import OnnxSide, ancestors


def through_fusions(igraph, sessions: dict, sides: dict, floor, feeds: dict, precisions, merged: dict,
                    notes: list) -> Row | None:
    """The first node, by bisection, whose value differs when cut graphs run with ONNX Runtime's
    fusions; None where the two back ends' own outputs agree (or no cut reproduces their difference).
    Appends what it did to `notes`."""
    a, b = sessions
    half = half_of(precisions)
    if not any(isinstance(s, OnnxSide) for s in sides.values()):
        return None
    own = {n: s.run_all(feeds) for n, s in sessions.items()}
    f = floor(feeds) if floor is not None else {}
    bad = [(name, p) for name, p in igraph.outputs
           if not judged(p, igraph, own[a][name], own[b][name], f.get(p), half).ok]
    if not bad:
        return None
    full = {n: s(feeds) for n, s in sides.items() if not isinstance(s, OnnxSide)}
    tried: dict[str, Row] = {}

    def fails(p: str) -> bool:
        if p not in tried:
            x, y = (full[n][p] if n in full else sides[n].upto(p, feeds) for n in (a, b))
            tried[p] = judged(p, igraph, x, y, f.get(p), half)
        return not tried[p].ok
    out = bad[0][1]
    cand = [n.path for n in igraph.nodes if n.op != "input" and n.path in ancestors(igraph, out)]
    if not fails(out):
        notes.append(f"the two back ends' outputs differ ({bad[0][0]}), but no cut graph reproduces it")
        return None
    lo, hi = -1, len(cand) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(cand[mid]) else (mid, hi)
    cur = cand[hi]
    while (nxt := next((i for i in igraph[cur].inputs if i in cand and fails(i)), None)) is not None:
        cur = nxt     # a failing input: the difference began before `cur`
    row = tried[cur]
    row.merged = tuple(q for q in merged.get(cur, ()) if q != cur)
    notes.append(f"every exposed tensor agrees, but the back ends' own outputs do not ({bad[0][0]}): ONNX Runtime's "
                 f"graph optimisations, which exposing turns off, make the difference; the graph cut after each of "
                 f"{len(tried)} candidates (bisection in graph order) and run with them parts first at {cur}")
    return row


def judged(p: str, igraph, ref, got, floor, half) -> Row:
    row = Row.of(igraph[p])
    accumulate(row, ref, got, floor)
    verdict(row, half)
    return row
