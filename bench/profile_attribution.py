"""resgraph profile against bench in the same run: is the per-layer table the whole model's time?

    python bench/profile_attribution.py [--spec specs/resnet50.yaml] [--backends ort-cpu,torch-cpu] [--runs 20]
                                        [--json FILE]

For each back end, `resgraph.profile.profile` measures the whole-model latency with bench's own timing
core (runtime/bench.py time_runs) on the plain session, then the per-layer times from the back end's
own profiler on the instrumented one. Printed per back end: the share of the profiled time attributed
to spec lines (goal >= 95%), the sum of every row (spec lines and the named rest) against bench's
median latency (goal within 5%), and the profiler's own overhead (the instrumented run's median
latency against bench's). For scale, bench is also run alone just before (its own run-to-run
spread: torch-cpu's median moves several percent between two such runs on this 2-core machine).
The model has random weights (a fresh init): what is measured is time.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import arg_parser, footer, header, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = arg_parser(__doc__)
    ap.add_argument("--spec", default="specs/resnet50.yaml")
    ap.add_argument("--backends", default="ort-cpu,torch-cpu")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    from resgraph.compile import compile_spec
    from resgraph.profile import profile
    from resgraph.runtime import open_session
    from resgraph.runtime.bench import bench
    t0 = time.perf_counter()
    results = {"header": header("== resgraph profile against bench, same run: " + a.spec, 0,
                                ("onnxruntime", "torch"), "threads (the runtimes' default)"), "backends": {}}
    with tempfile.TemporaryDirectory() as d:
        folder = compile_spec(a.spec, out=os.path.join(d, "m")).out
        for b in a.backends.split(","):
            with open_session(folder, b) as s:
                alone = bench(s, 1, duration=0.0, warmup=1.0, min_iterations=a.runs).latency_ms["median"]
            r = profile(folder, b, runs=a.runs)
            over = r["profiled_latency_ms"] / r["bench_latency_ms"]
            results["backends"][b] = {k: r[k] for k in ("attributed", "total_ms", "bench_latency_ms",
                                                         "profiled_latency_ms", "sum_vs_bench")}
            results["backends"][b]["bench_alone_ms"] = alone
            print(f"\n   {b}: {len(r['rows'])} spec lines, {r['attributed']:.1%} of {r['total_ms']:.1f} ms attributed"
                  f"   goal >= 95%")
            print(f"      sum of rows {r['total_ms']:.1f} ms / bench's median latency {r['bench_latency_ms']:.1f} ms "
                  f"= {r['sum_vs_bench']:.3f}   goal within 0.95..1.05")
            print(f"      profiled run {r['profiled_latency_ms']:.1f} ms: the profiler's overhead {over:.3f}x")
            print(f"      bench alone, just before: {alone:.1f} ms ({alone / r['bench_latency_ms']:.3f}x bench's in the "
                  f"profile run: the measurement's own spread)")
            for o in sorted(r["other"], key=lambda o: -o["ms"])[:4]:
                print(f"      not a spec line: {o['name']:<40} {o['ms']:.2f} ms")
    footer(results, t0)
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
