"""What is in an ONNX file, for bench/onnx_speed.py's section 3: its size and that of any external-data side
file it references (then the .onnx is not self-contained), opset, nodes, initializers, the op-type histogram."""
from __future__ import annotations

import os
from pathlib import Path


def describe_onnx(path: Path) -> dict:
    import onnx
    from onnx.external_data_helper import uses_external_data
    m = onnx.load(str(path), load_external_data=False)
    side = set()
    for t in m.graph.initializer:
        if uses_external_data(t):
            side.update(e.value for e in t.external_data if e.key == "location")
    side_bytes = {loc: os.path.getsize(path.parent / loc) if (path.parent / loc).exists() else None for loc in sorted(side)}
    hist: dict[str, int] = {}
    for n in m.graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    size = os.path.getsize(path)
    return {"file": str(path), "bytes": size, "side_files": side_bytes,
            "total_bytes": size + sum(v or 0 for v in side_bytes.values()), "self_contained": not side,
            "opset": {o.domain or "ai.onnx": o.version for o in m.opset_import}, "ir_version": m.ir_version,
            "producer": f"{m.producer_name} {m.producer_version}".strip(), "nodes": len(m.graph.node),
            "initializers": len(m.graph.initializer), "functions": len(m.functions),
            "ops": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))}


def bench_files(files: dict[str, Path]) -> dict:
    print("\n== 3. the files (from the whole-process runs)")
    res = {k: describe_onnx(p) for k, p in files.items()}
    print(f"   {'':<10} {'.onnx':>14} {'side file':>14} {'total':>14}  {'self-contained':<15} {'opset':>5} "
          f"{'nodes':>6} {'inits':>6}")
    for k, d in res.items():
        side = sum(v or 0 for v in d["side_files"].values())
        print(f"   {k:<10} {d['bytes']:>14,} {side if d['side_files'] else '-':>14} {d['total_bytes']:>14,}  "
              f"{'yes' if d['self_contained'] else 'no: ' + ', '.join(d['side_files']):<15} "
              f"{d['opset'].get('ai.onnx', '?'):>5} {d['nodes']:>6} {d['initializers']:>6}")
    for k, d in res.items():
        ops = ", ".join(f"{op} {c}" for op, c in d["ops"].items())
        print(f"   {k} ops: {ops}   [{d['producer']}, IR v{d['ir_version']}]")
    return res
