"""`resgraph parity --locate`: the first spec line, in graph order, where two back ends part.

Both back ends run again with every intermediate tensor exposed:
- ONNX Runtime (ort-cpu, ort-cuda) runs a model the compiler lowers from the folder's inference graph
  (its spec, the inference passes folded as manifest.folded says, at the folder's precision) with every
  node of that graph as an extra output, and with the weights of the folder's model.onnx (its
  initializers, by name): what is located is the file the user runs, so a model.onnx altered after
  compiling is found at the altered layer. The model's graph is checked against model.onnx's, node
  for node (a difference is reported as a note: locate then ran the compiler's graph).
- torch (torch-cpu, torch-cuda) runs the folder's module (spec.yaml + weights.safetensors) through an
  fx Interpreter that records every node's output by IR path (an fx GraphModule's functional nodes,
  relu and add among them, have no module a forward hook could sit on).

The two graphs name their tensors by IR path, but the inference graph has fewer nodes: a bn folded into
the conv before it is gone (the conv's output stands for the bn's), no-ops are dropped (their input
stands for them), an explicit projection is spelled out as `<path>.conv` + `<path>.bn`. `stands_for`
maps each inference node to the torch tensor its output equals.

Every node of the inference graph is judged by parity's rule for the pair (runtime/parity.py):
    fp32 on both sides   max |a - b| <= 1e-4, or <= 4 x that tensor's fp32 noise floor (the torch module
                         in fp32 against the same module in fp64, on the same inputs, at that tensor)
    fp16 / TF32 / bf16   |a - b| <= 2e-2 (8e-2 bf16) x (1 + |reference|), element by element
A NaN or inf on one side where the other has a number counts as an infinite error. The first node
beyond its tolerance, in graph order, is the located one; its main-input chain (first inputs back to
the graph's input) shows how the error grew. int8 folders are not located here: their per-layer
figures are `resgraph quantize FOLDER --explain --calibrate INPUTS` (SQNR per layer, in spec terms).

Cost: one run of each side plus one of the fp64 module (fp32 pairs), over at most LOCATE_SAMPLES inputs,
in batches that keep every recorded tensor of one batch under LOCATE_BYTES.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import Diagnostic, OptionError
from ..runtime.parity import HALF_REL
from .judge import Row, judge
from .fusions import through_fusions
from .sides import ONNX_SIDES, side, stands_for, torch_fp64

LOCATE_SAMPLES = 8
TORCH_SIDES = ("torch-cpu", "torch-cuda")
LOCATABLE = ONNX_SIDES + TORCH_SIDES


@dataclass
class Located:
    reference: str
    other: str
    rule: str                    # fp32 | fp16 | tf32 | bf16
    inputs: str                  # which inputs, in words
    rows: list[Row]              # every compared node, graph order
    notes: list[str] = field(default_factory=list)
    fused: Row | None = None     # found through ONNX Runtime's own fusions (`through_fusions`), where rows all agree

    @property
    def first(self) -> Row | None:
        return self.fused or next((r for r in self.rows if not r.ok), None)

    def chain(self, row: Row) -> list[Row]:
        """The rows on `row`'s main-input chain (first inputs), from the graph's input to it."""
        at = {r.path: r for r in self.rows}
        out = [row]
        while out[-1].inputs and out[-1].inputs[0] in at:
            out.append(at[out[-1].inputs[0]])
        return out[::-1]

    def diagnostic(self) -> Diagnostic | None:
        """The located line as a compiler note: FILE:LINE:COL, what differs by how much, the chain in the hint."""
        r = self.first
        if r is None:
            return None
        merged = f", {' and '.join(r.merged)} folded in" if r.merged else ""
        bad = f"; {r.nonfinite:,} values NaN or inf on one side only" if r.nonfinite else ""
        how = " with ONNX Runtime's fusions" if self.fused else ""
        msg = (f"{self.other} parts from {self.reference} first at {r.path} ({r.op}{merged}){how}: max |a-b| "
               f"{r.max_abs:.3g}, scaled {r.max_scaled:.3g}, beyond {r.tolerance}{bad}{r.site}")
        if self.fused:
            return Diagnostic(r.loc, msg, self.notes[-1], "note")
        grown = " -> ".join(f"{c.path} {c.max_scaled:.2g}" for c in self.chain(r))
        return Diagnostic(r.loc, msg, f"scaled error along its main input: {grown}", "note")

    def to_json(self) -> dict:
        r = self.first
        return {"reference": self.reference, "other": self.other, "rule": self.rule, "inputs": self.inputs,
                "first": None if r is None else r.to_json(), "through_fusions": self.fused is not None,
                "chain": [] if r is None else [c.path for c in self.chain(r)],
                "rows": [x.to_json() for x in self.rows], "notes": self.notes}


def locate(folder: str, reference: str, other: str, source: str = "16", shape: str | None = None, options=None,
           samples: int = LOCATE_SAMPLES) -> Located:
    """Run `reference` and `other` on parity's inputs (`source`: a count of seeded random ones or a
    folder; `shape`: the size label of a model with size variables, parity's HxW) with every tensor
    exposed, and judge every node of the inference graph; where every node agrees but the two back
    ends' own outputs do not, locate through ONNX Runtime's fusions (`through_fusions`). Pre: a float
    folder (fp32 or fp16); both back ends in LOCATABLE."""
    from ..compile import inference_graph
    from ..frontend import check_compiled
    from ..manifest import read_manifest
    from ..runtime import Options
    from ..runtime.session import open_session
    manifest = read_manifest(folder)
    check_locatable(manifest, (reference, other))
    checked = check_compiled(folder)
    igraph, iw, dims = inference_graph(folder, manifest)
    options = replace(options or Options(), verify=False, torch_compile=False, cuda_graph=False)
    sessions, fused = {}, None
    try:
        for name in (reference, other):
            sessions[name] = open_session(folder, name, options)
        sides = {n: side(s, folder, manifest, checked.graph, igraph, iw, dims) for n, s in sessions.items()}
        what, feeds = located_inputs(source, sessions[reference], manifest, shape, samples)
        precisions = (sessions[reference].precision, sessions[other].precision)
        fp32 = not any(p in HALF_REL for p in precisions)
        floor = torch_fp64(folder, checked.graph, igraph) if fp32 else None
        merged = stands_for(checked.graph, igraph)
        rows = judge(igraph, sides[reference], sides[other], floor, feeds, precisions, merged)
        notes = [n for s in sides.values() for n in s.notes]
        if all(r.ok for r in rows):
            fused = through_fusions(igraph, sessions, sides, floor, feeds, precisions, merged, notes)
    finally:
        for s in sessions.values():
            s.close()
    rule = max((p for p in precisions if p in HALF_REL), key=HALF_REL.get, default="fp32")
    return Located(reference, other, rule, what, rows, notes, fused)


def pick(pairs: list[dict]) -> dict | None:
    """Which of parity's pairs (its report's "pairs") --locate re-runs: the first failing one whose two
    back ends are LOCATABLE, else the first with a half-precision side (fp16 against fp32), else the first."""
    ok = [p for p in pairs if p["reference"] in LOCATABLE and p["other"] in LOCATABLE]
    return next((p for p in ok if not p["ok"]), None) or next((p for p in ok if p["rule"] != "fp32"), None) \
        or next(iter(ok), None)


def check_locatable(manifest, backends) -> None:
    """OptionError for an int8 folder or a back end whose tensors cannot be exposed."""
    if manifest.precision == "int8":
        raise OptionError.at("--locate", "--locate compares float graphs layer by layer; this folder's model.onnx "
                             "is int8", "per-layer SQNR of int8 in spec terms: resgraph quantize FOLDER --explain "
                             "--calibrate INPUTS (the folder's fp32 parent or this one)")
    for b in backends:
        if b not in LOCATABLE:
            raise OptionError.at("--locate", f"--locate cannot expose the layers of {b}",
                                 f"it locates between {', '.join(LOCATABLE)}: e.g. --backends ort-cpu,torch-cpu")


def located_inputs(source: str, session, manifest, shape: str | None, samples: int) -> tuple[str, dict]:
    """Parity's inputs (the same seeded random ones, or the folder's), at parity's size `shape`, the
    first `samples` of them."""
    from ..runtime.parity import default_sizes, folder_cases, random_cases
    if source.isdigit():
        sizes = default_sizes(manifest) if manifest.sizes else [{}]
        cases, what = random_cases(source, session, sizes)
    else:
        cases, what, _ = folder_cases(source, session)
    label, feeds = next(((k, f) for k, f in cases if k == shape), cases[0])
    n = min(samples, len(next(iter(feeds.values()))))
    at = f" at {label}" if label else ""
    return f"the first {n} of {what.split(' at ')[0]}{at}", {k: v[:n] for k, v in feeds.items()}


