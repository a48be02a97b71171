"""How fast is `resgraph check`?  A side-by-side benchmark that prints ratios, never asserts on time.

What is measured, in one run:

1. Start-up.  The wall time of the whole process

       python -m resgraph check specs/resnet152.yaml        (and the `resgraph` console script,
                                                             if one sits next to sys.executable)

   against the whole process `python -c "import torch"` run by the same interpreter, and a bare
   `python -c pass` for reference.  Each command runs once untimed (to warm the OS file cache), then
   --repeat times, interleaved (check, script, torch, pass, check, ...), so drift in machine load hits
   all of them alike.  Reported: median and min, and the ratio of the medians check / import-torch,
   with its goal (<= 0.25: checking a spec should cost a small fraction of merely importing the
   framework it compiles for).  Without torch installed that comparison is skipped.
   Beside it, the in-process time of `resgraph.check_file(path)` (one warm-up, then the median of
   --repeat runs) separates the compiler's own cost from interpreter and import start-up.

2. Scaling.  Specs with 10, 30, 100, 300 and 1000 residual basic blocks (CIFAR-style, as in
   specs/cifar_resnet20_a.yaml: input [3, 32, 32], three stages of 16/32/64 maps, the last two
   starting with stride 2, `shortcut: projection`, so that Ws is inserted at layer2.0 and layer3.0)
   are generated into a temporary directory.  For each: nodes in the checked graph, in-process check
   time, time per node, whole-process time.  Then the per-node time at 1000 blocks over that at 100
   blocks (goal ~1.0: "linear" if <= 1.5, else "SUPERLINEAR") and the least-squares slope of
   log(time) against log(nodes) (1.0 is linear, 2.0 quadratic).

Run from the repository root:

    .venv/bin/python bench/check_speed.py                 # full run (about half a minute)
    .venv/bin/python bench/check_speed.py --quick         # CI smoke run: fewer sizes and repeats (< 30 s)
    .venv/bin/python bench/check_speed.py --repeat 15 --json results.json

Only the standard library and resgraph are used.  Exit status 0 unless a check itself fails.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import usable_cpus, write_json  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/resnet152.yaml"
SIZES = (10, 30, 100, 300, 1000)
QUICK_SIZES = (10, 100, 1000)
STARTUP_GOAL = 0.25      # check process / import-torch process, medians
LINEAR_LIMIT = 1.5       # per-node time at the largest size / at 100 blocks

try:
    import resgraph
except ImportError:      # not installed: use the checkout this script lives in
    sys.path.insert(0, str(ROOT))
    import resgraph


# --------------------------------------------------------------------------------------------- helpers

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


def runs(n: int) -> str:
    return f"{n} run{'s' * (n != 1)}"


def stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times),
            "times_s": [round(t, 6) for t in times]}


def run_process(cmd: list[str]) -> float:
    """Wall time of one whole process; a failing command ends the benchmark (its time would mean nothing)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace"))
        raise SystemExit(f"check_speed: command failed with exit status {p.returncode}: {' '.join(cmd)}")
    return dt


def time_processes(cmds: dict[str, list[str]], repeat: int) -> dict[str, list[float]]:
    """One untimed warm-up each, then `repeat` timed rounds, the commands interleaved within a round."""
    for cmd in cmds.values():
        run_process(cmd)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for k, cmd in cmds.items():
            times[k].append(run_process(cmd))
    return times


def time_in_process(path: str, runs: int):
    """One warm-up, then `runs` timed calls of resgraph.check_file(path). Returns (times, checked)."""
    checked = resgraph.check_file(path)
    times = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        resgraph.check_file(path)
        times.append(time.perf_counter() - t0)
    return times, checked


def console_script() -> Path | None:
    bindir = Path(sys.executable).parent
    for name in ("resgraph", "resgraph.exe"):
        if (bindir / name).is_file():
            return bindir / name
    return None


def dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001  (not installed, or odd metadata)
        return None


# --------------------------------------------------------------------------------------------- spec generator

SPEC_TEMPLATE = """\
resgraph: 1
name: bench_{n}
description: "generated by bench/check_speed.py: {n} basic residual blocks"
input: {{name: image, shape: [3, 32, 32]}}
output: {{name: logits}}
defaults:
  conv: {{bias: false}}
shortcut: projection
blocks:
  basic:
    args: {{out: null, stride: 1}}
    residual:
      layers:
        - conv: {{out: $out, kernel: 3, stride: $stride}}
        - bn
        - relu
        - conv: {{out: $out, kernel: 3}}
        - bn
      post: relu
layers:
  - conv: {{id: conv1, out: 16, kernel: 3}}
  - bn: {{id: bn1}}
  - relu: {{id: relu}}
  - basic: {{id: layer1, out: 16, repeat: {r1}}}
  - basic: {{id: layer2, out: 32, repeat: {r2}, first: {{stride: 2}}}}
  - basic: {{id: layer3, out: 64, repeat: {r3}, first: {{stride: 2}}}}
  - global_avgpool: {{id: avgpool}}
  - flatten
  - linear: {{id: fc, out: 10}}
"""


def make_spec(n: int) -> str:
    """n >= 3 basic blocks split over three stages (32x32, 16x16, 8x8): two stride-2 stages, two Ws."""
    if n < 3:
        raise ValueError("need at least one block per stage (n >= 3)")
    r1 = r2 = n // 3
    return SPEC_TEMPLATE.format(n=n, r1=r1, r2=r2, r3=n - r1 - r2)


# --------------------------------------------------------------------------------------------- the two parts

def bench_startup(repeat: int) -> dict:
    spec = str(ROOT / SPEC)
    py = sys.executable
    cmds = {"python -m resgraph check": [py, "-m", "resgraph", "check", spec]}
    script = console_script()
    if script is not None:
        cmds["resgraph check (console script)"] = [str(script), "check", spec]
    have_torch = importlib.util.find_spec("torch") is not None
    if have_torch:
        cmds["python -c 'import torch'"] = [py, "-c", "import torch"]
    cmds["python -c pass (bare interpreter)"] = [py, "-c", "pass"]

    print(f"\n== 1. start-up: whole process `resgraph check {SPEC}` vs `python -c 'import torch'`")
    print(f"   {runs(repeat)} each, interleaved, after one untimed warm-up\n")
    times = time_processes(cmds, repeat)
    res: dict = {"spec": SPEC, "repeat": repeat, "processes": {k: stats(v) for k, v in times.items()}}
    w = max(map(len, cmds))
    print(f"   {'process':<{w}}  {'median':>11}  {'min':>11}")
    for k, v in times.items():
        print(f"   {k:<{w}}  {ms(statistics.median(v))}  {ms(min(v))}")

    print()
    if have_torch:
        torch_med = statistics.median(times["python -c 'import torch'"])
        res["ratios"] = {}
        for k in cmds:
            if k.startswith(("python -m resgraph", "resgraph check")):
                r = statistics.median(times[k]) / torch_med
                res["ratios"][k] = r
                verdict = "meets goal" if r <= STARTUP_GOAL else "ABOVE GOAL"
                print(f"   ratio {k} / import torch (medians): {r:.3f}   goal <= {STARTUP_GOAL}   {verdict}")
        res["goal"] = STARTUP_GOAL
    else:
        res["ratios"] = None
        print("   torch is not installed for this interpreter: the check / import-torch comparison is skipped")

    in_times, checked = time_in_process(spec, repeat)
    res["in_process"] = stats(in_times) | {"nodes": len(checked.graph.nodes)}
    med = statistics.median(in_times)
    proc_med = statistics.median(times["python -m resgraph check"])
    bare_med = statistics.median(times["python -c pass (bare interpreter)"])
    print(f"\n   in-process resgraph.check_file({SPEC}): median {ms(med).strip()}, min {ms(min(in_times)).strip()}"
          f"  ({len(checked.graph.nodes)} nodes, {runs(repeat)} after a warm-up)")
    print(f"   so of the {ms(proc_med).strip()} process: ~{ms(bare_med).strip()} interpreter, "
          f"~{ms(max(proc_med - bare_med - med, 0.0)).strip()} imports and output, ~{ms(med).strip()} compiling")
    return res


def bench_scaling(sizes: tuple[int, ...], in_runs: int, proc_runs: int) -> dict:
    print("\n== 2. scaling: generated CIFAR-style specs (basic blocks, 3 stages, 2 stride-2 stages, projection Ws)")
    print(f"   in-process: median of {runs(in_runs)} after a warm-up; whole process: median of {runs(proc_runs)}"
          " after a warm-up\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="resgraph-bench-") as tmp:
        for n in sizes:
            path = os.path.join(tmp, f"bench_{n}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                f.write(make_spec(n))
            in_times, checked = time_in_process(path, in_runs)
            proc = time_processes({"check": [sys.executable, "-m", "resgraph", "check", path]}, proc_runs)["check"]
            nodes = len(checked.graph.nodes)
            t = statistics.median(in_times)
            rows.append({"blocks": n, "nodes": nodes, "projections": len(checked.graph.projections),
                         "in_process_s": t, "us_per_node": t / nodes * 1e6,
                         "in_process_min_s": min(in_times), "us_per_node_min": min(in_times) / nodes * 1e6,
                         "process_s": statistics.median(proc), "in_process_times_s": [round(x, 6) for x in in_times],
                         "process_times_s": [round(x, 6) for x in proc]})

    print(f"   {'blocks':>6}  {'nodes':>6}  {'Ws':>3}  {'in-process':>11}  {'us/node':>8}  {'whole process':>13}")
    for r in rows:
        print(f"   {r['blocks']:>6}  {r['nodes']:>6}  {r['projections']:>3}  {ms(r['in_process_s']):>11}  "
              f"{r['us_per_node']:>8.1f}  {ms(r['process_s']):>13}")

    res: dict = {"rows": rows}
    by_n = {r["blocks"]: r for r in rows}
    base = by_n.get(100, rows[0])
    top = rows[-1]
    if top is not base:
        ratio = top["us_per_node"] / base["us_per_node"]
        verdict = "linear" if ratio <= LINEAR_LIMIT else "SUPERLINEAR"
        ratio_min = top["us_per_node_min"] / base["us_per_node_min"]
        res["per_node_ratio"] = {"large": top["blocks"], "base": base["blocks"], "ratio": ratio,
                                 "ratio_of_minimums": ratio_min, "verdict": verdict}
        print(f"\n   per-node time, {top['blocks']} blocks / {base['blocks']} blocks: {ratio:.2f}   "
              f"(goal ~1.0, linear if <= {LINEAR_LIMIT})   {verdict}")
        print(f"   the same from the fastest runs: {ratio_min:.2f}   (a large gap to the line above means a noisy machine)")
    if len(rows) >= 2:
        xs = [math.log(r["nodes"]) for r in rows]
        ys = [math.log(r["in_process_s"]) for r in rows]
        slope, _ = statistics.linear_regression(xs, ys)
        res["fit_exponent"] = slope
        print(f"   least-squares fit, in-process time ~ nodes^k over {len(rows)} sizes: k = {slope:.2f}"
              "   (1.0 linear; fixed costs, which dominate small specs, pull k below 1)")
        big = [r for r in rows if r["blocks"] >= 100]
        if 2 <= len(big) < len(rows):
            slope_big, _ = statistics.linear_regression([math.log(r["nodes"]) for r in big],
                                                        [math.log(r["in_process_s"]) for r in big])
            res["fit_exponent_from_100_blocks"] = slope_big
            print(f"   the same over the {len(big)} sizes from 100 blocks up: k = {slope_big:.2f}")
    return res


# --------------------------------------------------------------------------------------------- main

def header() -> dict:
    cpus = usable_cpus()
    h = {"python": f"{platform.python_implementation()} {platform.python_version()}",
         "executable": sys.executable, "platform": platform.platform(), "machine": platform.machine(),
         "cpu_count": os.cpu_count(), "cpus_usable": cpus, "resgraph": resgraph.__version__,
         "torch": dist_version("torch"), "writes_bytecode": not sys.dont_write_bytecode,
         "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    print("resgraph check speed")
    print(f"   python    {h['python']}  ({h['executable']})")
    print(f"   platform  {h['platform']} ({h['machine']})")
    print(f"   cpus      {h['cpu_count']} ({h['cpus_usable']} usable)")
    print(f"   resgraph  {h['resgraph']}   torch {h['torch'] or 'not installed'}")
    if sys.dont_write_bytecode:
        print("   bytecode  not written (PYTHONDONTWRITEBYTECODE / -B): modules without a cached .pyc are compiled"
              " from source in every process, which start-up times include")
    return h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="timed runs per measurement (default 7, 3 with --quick); whole-process runs in the "
                         "scaling table: at most 3 (1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run for CI: sizes {', '.join(map(str, QUICK_SIZES))} and fewer repeats (< 30 s)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        ap.error("--repeat must be at least 1")

    t0 = time.perf_counter()
    results = {"header": header(), "quick": args.quick}
    results["startup"] = bench_startup(repeat)
    if args.quick:
        results["scaling"] = bench_scaling(QUICK_SIZES, in_runs=min(repeat, 3), proc_runs=1)
    else:
        results["scaling"] = bench_scaling(SIZES, in_runs=repeat, proc_runs=min(repeat, 3))
    results["total_s"] = time.perf_counter() - t0
    print(f"\n   benchmark took {results['total_s']:.1f} s")

    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
