"""`resgraph profile`: where a compiled model's time goes, by spec line.

    report = profile("compiled/resnet50", backend="ort-cpu", batch=1, runs=20)

runtime/profiler.py runs the folder on one back end, times it as `bench` does (bench's core), then
with the back end's own profiler on (the same core); this package maps the profiler's names to the IR
the back end runs (ONNX Runtime and TensorRT: the inference graph model.onnx was lowered from,
attribute.py; torch: the spec's own graph) and so to spec lines. Layer 7: it needs the IR, which the
runtime does not import.

The report (JSON, docs/inference.md): one row per IR node (path, line, op, shape, MACs, ms, share,
GFLOP/s, fused), `other` rows for the time of no spec line (layout copies, the runtime's own time, the
call), the attributed share, and the per-layer sum against bench's median latency in the same run.
"""
from __future__ import annotations

from .attribute import fold, owners, rows

__all__ = ["profile", "fold", "owners", "rows", "LAYOUT"]

LAYOUT = "layout:"   # what a back end's own node of no spec line is called in `other`


def profile(artifact: str, backend: str = "auto", batch: int = 1, hw: tuple[int, int] | None = None,
            runs: int = 20, options=None, warmup: float = 1.0) -> dict:
    """The profile report of `artifact` on `backend` (see the module docstring); `hw`: the first
    input's H x W for a model with size variables (checked as bench's --shape)."""
    from ..manifest import folder_of, read_manifest
    from ..runtime import Options
    from ..runtime.bench import default_sizes, sizes_at
    from ..runtime.profiler import profile_session
    from ..version import __version__
    folder = folder_of(artifact)
    manifest = read_manifest(folder)
    sizes = sizes_at(manifest, [hw])[0] if hw else default_sizes(manifest) if manifest.sizes else {}
    t = profile_session(folder, backend, batch, runs, options or Options(), sizes, warmup)
    graph = _graph(folder, manifest, t.backend, sizes)
    paths = {n.path for n in graph.nodes}
    timed = {name: owners(name, paths) for name in t.events}
    table = rows(graph, {k: v for k, v in t.events.items() if timed[k]}, {k: v for k, v in timed.items() if v},
                 batch)
    other = [{"name": f"{LAYOUT} {name}" if t.ops.get(name) else name, "ms": _median(v)}
             for name, v in t.events.items() if not timed[name]]
    other += [{"name": name, "ms": _median(v)} for name, v in t.other.items()]
    spec_ms = sum(r["ms"] for r in table)
    total = spec_ms + sum(o["ms"] for o in other)
    for r in (*table, *other):
        r["share"] = r["ms"] / total if total else 0.0
    bench_ms = t.bench.latency_ms["median"]
    return {"resgraph_version": __version__, "artifact": folder, "model": manifest.name, "backend": t.backend,
            "device": t.device, "precision": t.precision, "batch": batch, "shape": t.bench.shape, "runs": runs,
            "rows": table, "other": other, "attributed_ms": spec_ms, "total_ms": total,
            "attributed": spec_ms / total if total else 0.0,
            "profiled_latency_ms": _median(t.latency_ms), "bench_latency_ms": bench_ms,
            "sum_vs_bench": total / bench_ms if bench_ms else None, "bench": t.bench.to_json(),
            "macs": sum(r["macs"] for r in table),
            "warnings": [f"output {k}: {v:.1%} of its values are NaN or inf on a random batch"
                         for k, v in t.nonfinite.items()]}


def _graph(folder: str, manifest, backend: str, sizes: dict):
    """The IR `backend` runs: the spec's graph (torch), or the inference graph model.onnx and the
    engine were lowered from (bn folded where the folder folds, projections spelt out, no-ops gone)."""
    from ..frontend import check_at, check_compiled
    checked = check_compiled(folder)
    if sizes:
        t = manifest.input.at(sizes)
        checked = check_at(checked, (t[1], t[2]), "--shape")
    if backend.startswith("torch"):
        return checked.graph
    import numpy as np

    from ..ops.count import state_dict_shapes
    from ..passes.inference import for_inference
    g = checked.graph
    zeros = {k: np.zeros(s, np.float32) for k, s in state_dict_shapes(g).items()}   # the structure is what counts
    return for_inference(g, zeros, fold=manifest.folded)[0]


def depth_rows(report: dict, depth: int | None) -> list[dict]:
    """The report's rows, folded to `depth` path parts where given (summary --depth's folding)."""
    if not depth:
        return report["rows"]
    total = report["total_ms"]
    return [dict(r, share=r["ms"] / total if total else 0.0) for r in fold(report["rows"], depth)]


def _median(v: list) -> float:
    from statistics import median
    return float(median(v)) if v else 0.0
