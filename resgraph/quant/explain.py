"""Sensitivity in spec terms: which layers' quantisation costs the accuracy.

A unit is a node that quantisation changes: a conv or linear (its int8 weights and its input's Q/DQ)
or an add (Q/DQ on both inputs), in graph order, not kept float. For each unit, on a few inputs:

- alone: the output SQNR against fp32 of the model with only that unit quantised (every other unit
  kept float, through qdq.quantize's keep_float: the caller's `build`);
- cumulative: with the units up to and including it quantised (in graph order).

`suggest` then keeps float the units that hurt most alone, one more at a time, until the gate
passes (at most MAX_SUGGESTED). Every model here is the u8 encoding run by ONNX Runtime's CPU
provider: what the gate measures.

Cost: two models built and run per unit (resnet50, 70 units, 32 inputs: 5 minutes on 2 cores, with the
suggestion's gate runs).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import Loc
from ..ir import Graph
from . import gate as g
from .qdq import Node, is_float

QUANTISED = ("conv", "linear", "add")
MAX_SUGGESTED = 12
SENSITIVITY_SAMPLES = 32


@dataclass(frozen=True)
class Unit:
    path: str
    op: str
    loc: Loc


def units(graph: Graph, keep_float=()) -> list[Unit]:
    return [Unit(n.path, n.op, n.loc) for n in graph.nodes if n.op in QUANTISED and not is_float(n.path, keep_float)]


def alone(us: list[Unit], build, batches, ref, progress=None) -> list[tuple[Unit, float]]:
    """(unit, output SQNR with that unit alone quantised), in graph order. `build(keep)`: the u8 model
    with the paths `keep` (and the user's keep_float) float; `ref`: fp32's outputs on `batches`."""
    out = []
    for i, u in enumerate(us):
        model = build(tuple(Node(v.path) for v in us if v is not u))
        out.append((u, g.sqnr_db(ref, g.outputs(model, batches))))
        if progress:
            progress(i + 1, len(us))
    return out


def cumulative(us: list[Unit], build, batches, ref, progress=None) -> list[tuple[Unit, float]]:
    """(unit, output SQNR with every unit up to it quantised), in graph order."""
    out = []
    for i, u in enumerate(us):
        model = build(tuple(Node(v.path) for v in us[i + 1:]))
        out.append((u, g.sqnr_db(ref, g.outputs(model, batches))))
        if progress:
            progress(i + 1, len(us))
    return out


def worst(sens: list[tuple[Unit, float]], k: int = 5) -> list[tuple[Unit, float]]:
    return sorted(sens, key=lambda us: us[1])[:k]


def suggest(passes, sens: list[tuple[Unit, float]], keep_float=()) -> tuple[str, ...] | None:
    """The shortest prefix of the units, most sensitive first, that `passes(keep_float)` accepts kept
    float (with the user's own keep_float); () when the gate passes as it is; None when MAX_SUGGESTED
    units are not enough."""
    keep = tuple(keep_float)
    if passes(keep):
        return ()
    for u, _ in worst(sens, MAX_SUGGESTED):
        keep += (Node(u.path),)
        if passes(keep):
            return keep[len(tuple(keep_float)):]
    return None
