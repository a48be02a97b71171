"""How fast is `resgraph compile`, and how good is its ONNX?  Side by side with torch.onnx.export; prints ratios, never asserts.

The same network three ways, with the same weights:

    resgraph compile specs/<m>.yaml --weights w.safetensors    (lowers resgraph's IR with the onnx package)
    torch.onnx.export(torchvision.models.<m>(), dynamo=True)   (torch.export + onnxscript: torch's default)
    torch.onnx.export(torchvision.models.<m>(), dynamo=False)  (the legacy TorchScript exporter)

for each of --models (default resnet50 and resnet152; --quick: resnet18 only).

0. Preparation, not timed.  `resgraph init specs/<m>.yaml -o w.safetensors` writes a seeded checkpoint.
   Its tensors are copied *positionally* into torchvision.models.<m>() (both state dicts list the same
   tensors in the same order with the same shapes; only some names differ, resgraph's
   `layer1.0.shortcut.conv` is torchvision's `layer1.0.downsample.0`), every pair's kind and shape checked.
   Then every batch norm gets a random (seeded) weight and bias and the running statistics of one random
   batch (a train-mode forward), as a trained network has them, and the result is written back to
   w.safetensors (resgraph's names) and to tv.pth (torchvision's).  Why: a fresh init's bn is weight 1,
   bias 0, mean 0, var 1, so every folded conv bias would be zero (the dynamo exporter's optimiser drops
   them all) and a wrongly folded bn would hardly show in the outputs.  --plain-init skips this.
   Both exporters see an example batch of 2 with the batch dimension dynamic (dynamo: dynamic_shapes
   Dim("batch"); legacy: dynamic_axes), as resgraph's model has it; all other options are torch's defaults
   (the dynamo exporter's onnxscript optimiser on, weights in an external .onnx.data file).

1. Compile time.
   a/b. Whole process, what a user waits for: the `resgraph compile` console script (next to
        sys.executable), against a small script (written into the work folder as export.py; --keep keeps it)
        that imports torch and torchvision, builds torchvision.models.<m>(), loads tv.pth and calls
        torch.onnx.export with dynamo=True, and the same with dynamo=False.  One untimed warm-up each
        (OS file cache), then --repeat rounds, interleaved, so that drift in machine load hits all alike.
        Each run writes to the same paths, so every timed run replaces the previous run's files, as
        recompiling does (for resgraph: swapping the output folder and deleting the previous set).
   c.   In process: one call of resgraph.compile.compile_spec(spec, weights=..., out=...) against the
        torch.onnx.export(...) call alone (model already built and loaded), dynamo and legacy.  The first
        call of each in this process is reported apart ("cold": lazy imports, first-use initialisation),
        then --repeat interleaved rounds (the first compile_spec writes into a new folder, the later ones
        replace its files).  compile_spec's own per-stage seconds (check, weights, passes, onnx, write)
        are reported as medians: where resgraph's time goes; --profile adds a cProfile of one call.
   Reported: medians, min..max, and the ratios of the medians with their goals: whole process
   >= 10x faster than the dynamo exporter and >= 5x faster than the legacy one; in process, the
   compile_spec call >= 20x faster than the dynamo export call.

2. ONNX Runtime on the CPU (CPUExecutionProvider, --threads intra-op threads, 1 inter-op thread, default
   graph optimisations and thread spinning), batch 1 and 8, on each of the three .onnx files (those the
   whole-process runs wrote), and PyTorch eager (torchvision's model, torch.set_num_threads(--threads),
   eval, inference_mode) for reference.
   - Session start-up: the wall time of onnxruntime.InferenceSession(path) per file, --repeat times
     interleaved after one untimed creation (file cache); the ORT graph optimisations it runs are included.
     Also for `resgraph compile --external-data` (weights in model.onnx.data, as the dynamo exporter
     writes them), compiled untimed for this row only.
   - Agreement: max abs difference of the logits on one random batch, each ONNX vs eager and resgraph's
     vs each exporter's (with the largest |logit| for scale and the top-1 agreement).
   - Latency: warm-up runs of each, then the same number of timed runs of each (sized from the warm-up
     to about a time budget per cell), in blocks, the order rotating block by block.  Each run is timed
     alone; reported: median and p90 per run, and the ratios of medians to resgraph's.  Eager (OpenMP
     threads that spin at barriers) suffers far more than ORT when other jobs take a core: on a busy
     machine its numbers and its ratio are mostly noise; compare the ORT rows with each other.

3. The files: size of the .onnx and of any external-data side file it references (the dynamo exporter
   writes weights to <file>.onnx.data by default: then the .onnx is not self-contained), opset, nodes,
   initializers, and the op-type histogram of each.

Run from the repository root:

    .venv/bin/python bench/onnx_speed.py --quick          # smoke run: resnet18, 2 repeats, 1 of whole processes (< 2 min)
    .venv/bin/python bench/onnx_speed.py                  # resnet50 and resnet152 (~15 min on 2 idle cores, more if busy)
    .venv/bin/python bench/onnx_speed.py --models resnet50 --repeat 7 --json onnx.json --keep /tmp/onnx-bench
    .venv/bin/python bench/onnx_speed.py --quick --profile   # + a cProfile of one compile_spec call

Needs torch, torchvision, onnx, onnxruntime, onnxscript and safetensors (resgraph[dev]).  The machine's load
average is printed at the start, at each section and at the end: timings from a busy machine are noisy
(noise only ever slows a run down, so the minimums are printed too).  Exit status 0 unless a step fails.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# bench/ is on sys.path when a script here runs
from _common import console_script, header, interleaved, load, write_json

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet50", "resnet152")
QUICK_MODELS = ("resnet18",)
BATCHES = (1, 8)
EXAMPLE_BATCH = 2          # the exporters' example input: batch 1 would be specialised by torch.export
GOALS = {                  # ratio of medians (other / resgraph): at least
    "process_vs_dynamo": 10.0,
    "process_vs_legacy": 5.0,
    "inproc_vs_dynamo": 20.0,
}
REFERENCE = {              # measured earlier on this machine kind, for comparison only
    "resnet50": {"dynamo": {"in_process_s": 4.5, "process_s": 8.8}, "legacy": {"in_process_s": 0.8, "process_s": 4.6}},
}
EXPORTERS = ("dynamo", "legacy")
TITLE = "resgraph compile vs torch.onnx.export: compile time, ONNX Runtime latency, files"
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "numpy")  # header versions, after resgraph

try:                     # importable for the imports inside the functions, and for _common.header
    import resgraph
except ImportError:      # not installed: use the checkout this script lives in
    sys.path.insert(0, str(ROOT))
    import resgraph  # noqa: F401


EXPORT_SCRIPT = f'''\
"""Written by bench/onnx_speed.py: build torchvision.models.<name>, load a state dict, export to ONNX."""
import sys

import torch
import torchvision

name, weights, out, mode = sys.argv[1:5]
model = getattr(torchvision.models, name)()
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
model.eval()
x = torch.randn({EXAMPLE_BATCH}, 3, 224, 224)
if mode == "dynamo":
    torch.onnx.export(model, (x,), out, dynamo=True, input_names=["image"], output_names=["logits"],
                      dynamic_shapes=({{0: torch.export.Dim("batch")}},))
else:
    torch.onnx.export(model, (x,), out, dynamo=False, input_names=["image"], output_names=["logits"],
                      dynamic_axes={{"image": {{0: "batch"}}, "logits": {{0: "batch"}}}})
'''


# --------------------------------------------------------------------------------------------- helpers

def sec(s: float) -> str:
    return f"{s:7.2f} s"


def msec(s: float) -> str:
    return f"{s * 1e3:8.1f} ms"


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]


def stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "p90_s": p90(times), "runs": len(times), "times_s": [round(t, 6) for t in times]}


def run_process(cmd: list[str]) -> float:
    """Wall time of one whole process; a failing command ends the benchmark (its time would mean nothing)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout.decode(errors="replace")[-4000:] + p.stderr.decode(errors="replace")[-4000:])
        raise SystemExit(f"onnx_speed: command failed with exit status {p.returncode}: {' '.join(cmd)}")
    return dt


@contextlib.contextmanager
def quiet():
    """The exporters print progress lines and warnings (the legacy exporter's deprecation): hide them."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def ratio_line(label: str, r: float, goal: float | None, r_min: float | None = None) -> str:
    s = f"   {label:<46} {r:7.2f}x"
    if r_min is not None:
        s += f"   (from the minimums {r_min:.2f}x)"
    if goal is not None:
        s += f"   goal >= {goal:g}x   {'meets goal' if r >= goal else 'BELOW GOAL'}"
    return s


# --------------------------------------------------------------------------------------------- 0. preparation

def calibrate_bn(tv, seed: int = 0) -> int:
    """Give every batch norm random affine parameters and the running statistics of one random batch.

    A fresh init has weight 1, bias 0, mean 0, var 1: folded, every conv bias is zero (the dynamo exporter's
    optimiser then drops them all) and a wrongly folded bn could hardly show.  Statistics measured on a
    batch (train-mode forward, cumulative averages) keep the activations at a trained network's scale,
    where arbitrary random statistics would blow them up over 50 blocks."""
    import torch
    from torch import nn
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in tv.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.1, generator=g)
            m.reset_running_stats()
            m.momentum = None
        tv.train()
        tv(torch.randn(4, 3, 224, 224, generator=g))
        for m in bns:
            m.momentum = 0.1
    tv.eval()
    return len(bns)


def prepare(model: str, work: Path, plain_init: bool = False) -> dict:
    """w.safetensors (resgraph init, batch norms calibrated unless plain_init), the torchvision model with
    the same weights, tv.pth, export.py."""
    import torch
    import torchvision
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from resgraph.frontend import check_file
    from resgraph.ops.count import state_dict_shapes

    spec = f"specs/{model}.yaml"
    w = work / "w.safetensors"
    t0 = time.perf_counter()
    run_process([str(console_script("onnx_speed")), "init", spec, "-o", str(w)])
    ours = load_file(str(w))
    order = list(state_dict_shapes(check_file(str(ROOT / spec)).graph))
    tv = getattr(torchvision.models, model)()
    theirs = tv.state_dict()
    if len(order) != len(theirs) or set(order) != set(ours):
        raise SystemExit(f"onnx_speed: {model}: {len(order)} resgraph tensors vs {len(theirs)} torchvision tensors")
    pairs = list(zip(order, theirs, strict=True))
    new = {}
    for a, b in pairs:
        if a.rpartition(".")[2] != b.rpartition(".")[2] or tuple(ours[a].shape) != tuple(theirs[b].shape):
            raise SystemExit(f"onnx_speed: {model}: resgraph's {a} {list(ours[a].shape)} does not pair with "
                             f"torchvision's {b} {list(theirs[b].shape)}")
        new[b] = ours[a].to(theirs[b].dtype)
    tv.load_state_dict(new, strict=True)
    tv.eval()
    bns = 0
    if not plain_init:   # calibrate in torchvision's model, then write the result back as resgraph's checkpoint
        bns = calibrate_bn(tv)
        with safe_open(str(w), "pt") as f:
            meta = dict(f.metadata() or {})
        meta["bench"] = "batch norms randomised and calibrated by bench/onnx_speed.py"
        sd = tv.state_dict()
        save_file({a: sd[b].to(ours[a].dtype).contiguous() for a, b in pairs}, str(w), metadata=meta)
    pth = work / "tv.pth"
    torch.save(tv.state_dict(), pth)
    script = work / "export.py"
    script.write_text(EXPORT_SCRIPT, encoding="utf-8")
    return {"spec": spec, "weights": w, "pth": pth, "script": script, "tv": tv, "tensors": len(order),
            "bns_calibrated": bns, "params": sum(p.numel() for p in tv.parameters()),
            "prepare_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------- 1. compile time

def bench_processes(model: str, prep: dict, work: Path, repeat: int) -> tuple[dict, dict]:
    py = sys.executable
    files = {"resgraph": work / "rg" / "model.onnx", "dynamo": work / "dynamo.onnx", "legacy": work / "legacy.onnx"}
    cmds = {
        "resgraph": [str(console_script("onnx_speed")), "compile", prep["spec"], "--weights", str(prep["weights"]),
                     "-o", str(work / "rg")],
        "dynamo": [py, str(prep["script"]), model, str(prep["pth"]), str(files["dynamo"]), "dynamo"],
        "legacy": [py, str(prep["script"]), model, str(prep["pth"]), str(files["legacy"]), "legacy"],
    }
    labels = {"resgraph": "resgraph compile (console script)",
              "dynamo": "python export.py: torch.onnx.export dynamo=True",
              "legacy": "python export.py: torch.onnx.export dynamo=False"}
    print(f"\n   a/b. whole process, {repeat} round{'s' * (repeat != 1)} interleaved after one untimed warm-up each   (load {load()})")
    warm = {k: run_process(c) for k, c in cmds.items()}
    times = interleaved({k: (lambda c=c: run_process(c)) for k, c in cmds.items()}, repeat, rotate=False)
    print_times("process", labels, times, "warm-up", warm)
    res = {"commands": {k: " ".join(c) for k, c in cmds.items()},
           "times": {k: stats(v) | {"warm_up_s": warm[k]} for k, v in times.items()}}
    med = {k: statistics.median(v) for k, v in times.items()}
    mn = {k: min(v) for k, v in times.items()}
    res["ratios"] = {f"process_vs_{e}": med[e] / med["resgraph"] for e in EXPORTERS}
    print()
    for e in EXPORTERS:
        print(ratio_line(f"whole process: {e} / resgraph (medians)", med[e] / med["resgraph"],
                         GOALS[f"process_vs_{e}"], mn[e] / mn["resgraph"]))
    return res, files


def _export(tv, x, path: Path, mode: str) -> None:
    import torch
    with quiet():
        if mode == "dynamo":
            torch.onnx.export(tv, (x,), str(path), dynamo=True, input_names=["image"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(tv, (x,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def bench_in_process(model: str, prep: dict, work: Path, repeat: int) -> dict:
    import torch

    from resgraph.compile import compile_spec

    spec = str(ROOT / prep["spec"])
    tv = prep["tv"]
    x = torch.randn(EXAMPLE_BATCH, 3, 224, 224)
    inproc = work / "inproc"
    inproc.mkdir(exist_ok=True)
    stages: list[dict] = []

    def rg():
        c = compile_spec(spec, weights=str(prep["weights"]), out=str(inproc / "rg"))
        stages.append(c.seconds)

    calls = {"resgraph": rg,
             "dynamo": lambda: _export(tv, x, inproc / "dynamo.onnx", "dynamo"),
             "legacy": lambda: _export(tv, x, inproc / "legacy.onnx", "legacy")}
    labels = {"resgraph": "resgraph.compile.compile_spec(...)",
              "dynamo": "torch.onnx.export(..., dynamo=True)",
              "legacy": "torch.onnx.export(..., dynamo=False)"}

    def timed(fn) -> float:
        gc.collect()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    print(f"\n   c. in process: the call alone (model built and loaded), first call apart, then {repeat} rounds"
          f" interleaved   (load {load()})")
    cold = {k: timed(fn) for k, fn in calls.items()}
    cold_stages = stages.pop()
    times = interleaved({k: (lambda fn=fn: timed(fn)) for k, fn in calls.items()}, repeat, rotate=False)
    print_times("call", labels, times, "first call", cold)
    med = {k: statistics.median(v) for k, v in times.items()}
    mn = {k: min(v) for k, v in times.items()}
    res = {"times": {k: stats(v) | {"first_call_s": cold[k]} for k, v in times.items()},
           "ratios": {f"inproc_vs_{e}": med[e] / med["resgraph"] for e in EXPORTERS},
           "first_call_ratios": {f"inproc_vs_{e}": cold[e] / cold["resgraph"] for e in EXPORTERS}}
    print()
    print(ratio_line("in process: dynamo export / compile_spec (medians)", med["dynamo"] / med["resgraph"],
                     GOALS["inproc_vs_dynamo"], mn["dynamo"] / mn["resgraph"]))
    print(ratio_line("in process: legacy export / compile_spec (medians)", med["legacy"] / med["resgraph"],
                     None, mn["legacy"] / mn["resgraph"]))
    print(ratio_line("first calls: dynamo export / compile_spec", cold["dynamo"] / cold["resgraph"], None))

    keys = [k for k in stages[0] if k != "total"]
    stage_med = {k: statistics.median(s[k] for s in stages) for k in keys + ["total"]}
    res["compile_stages_s"] = {"median": stage_med, "first_call": cold_stages,
                               "runs": [{k: round(v, 6) for k, v in s.items()} for s in stages]}
    total = stage_med["total"]
    print(f"\n   where compile_spec's time goes (its own .seconds, median of {len(stages)}; first call in brackets):")
    for k in keys:
        print(f"      {k:<8} {msec(stage_med[k])}  {stage_med[k] / total:5.1%}   [{msec(cold_stages[k]).strip()}]")
    print(f"      {'total':<8} {msec(total)}           [{msec(cold_stages['total']).strip()}]")
    return res


def profile_compile(prep: dict, work: Path, top: int = 18) -> dict:
    """cProfile of one (warm) compile_spec call: the functions with the most cumulative and own time."""
    import cProfile
    import pstats

    from resgraph.compile import compile_spec
    spec = str(ROOT / prep["spec"])
    compile_spec(spec, weights=str(prep["weights"]), out=str(work / "inproc" / "rg"))   # warm
    pr = cProfile.Profile()
    pr.enable()
    compile_spec(spec, weights=str(prep["weights"]), out=str(work / "inproc" / "rg"))
    pr.disable()
    out = {}
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        text = buf.getvalue()
        start = text.find("   ncalls")
        out[key] = text[start:].rstrip() if start >= 0 else text
        print(f"\n   cProfile of one warm compile_spec call, sorted by {key} (top {top}):")
        print("\n".join("   " + ln for ln in out[key].splitlines()))
    return out


# --------------------------------------------------------------------------------------------- 2. ONNX Runtime

def session_options(threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def bench_sessions(files: dict[str, Path], threads: int, repeat: int) -> tuple[dict, dict]:
    import onnxruntime as ort

    def create(path: Path):
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])

    print(f"\n   session start-up: onnxruntime.InferenceSession(path), {repeat} interleaved after one untimed"
          f"   (load {load()})")
    sessions = {k: create(p) for k, p in files.items()}
    times: dict[str, list[float]] = {k: [] for k in files}
    for _ in range(repeat):
        for k, p in files.items():
            sessions[k] = None
            gc.collect()
            t0 = time.perf_counter()
            sessions[k] = create(p)
            times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        print(f"   {k:<19} {msec(statistics.median(v))}   min..max {min(v) * 1e3:.1f}..{max(v) * 1e3:.1f} ms")
    return {k: stats(v) for k, v in times.items()}, sessions


def bench_latency(model: str, sessions: dict, tv, threads: int, runs_cfg: dict) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    res: dict = {"threads": threads, "batches": {}}
    names = list(sessions) + ["eager"]
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        fns = {}
        for k, s in sessions.items():
            feed = {s.get_inputs()[0].name: x}
            fns[k] = (lambda s=s, feed=feed: s.run(None, feed)[0])

        def eager(xt=xt):
            with torch.inference_mode():
                return tv(xt).numpy()
        fns["eager"] = eager

        # warm-up, outputs, and a per-run estimate for sizing the timed runs
        outs, est = {}, {}
        for k in names:
            for _ in range(runs_cfg["warmup"]):
                t0 = time.perf_counter()
                outs[k] = fns[k]()
                est[k] = time.perf_counter() - t0
        ref = outs["eager"]
        scale = float(np.abs(ref).max())
        agree = {}
        for a, b in [(k, "eager") for k in sessions] + [("resgraph", e) for e in EXPORTERS if e in sessions]:
            d = float(np.abs(outs[a].astype(np.float64) - outs[b]).max())
            top1 = float((outs[a].argmax(1) == outs[b].argmax(1)).mean())
            agree[f"{a} vs {b}"] = {"max_abs_diff": d, "relative": d / scale if scale else d, "top1_agreement": top1}

        n = int(runs_cfg["budget_s"] / max(est.values()))
        n = max(runs_cfg["min_runs"], min(runs_cfg["max_runs"], n))
        blocks = max(1, min(runs_cfg["blocks"], n))
        sizes = [n // blocks + (i < n % blocks) for i in range(blocks)]
        times: dict[str, list[float]] = {k: [] for k in names}
        print(f"\n   batch {batch}: {n} timed runs each after {runs_cfg['warmup']} warm-up, in {blocks} blocks, "
              f"order rotating   (load {load()})")
        for i, size in enumerate(sizes):
            order = names[i % len(names):] + names[:i % len(names)]
            for k in order:
                fn = fns[k]
                for _ in range(size):
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        med_rg = statistics.median(times["resgraph"])
        print(f"   {'':<10} {'median':>11} {'p90':>11} {'min':>11}   {'median / resgraph':>17}")
        for k in names:
            v = times[k]
            label = "eager" if k == "eager" else f"{k} (ORT)"
            print(f"   {label:<15}{msec(statistics.median(v))} {msec(p90(v))} {msec(min(v))}   "
                  f"{statistics.median(v) / med_rg:8.2f}")
        print(f"   agreement (logits up to |{scale:.3g}|):")
        for k, v in agree.items():
            print(f"      {k:<22} max abs diff {v['max_abs_diff']:<9.3g} ({v['relative']:.2g} of the largest |logit|)"
                  f"   top-1 agree {v['top1_agreement']:.0%}")
        res["batches"][str(batch)] = {"runs": n, "times": {k: stats(v) for k, v in times.items()},
                                      "ratios_to_resgraph": {k: statistics.median(v) / med_rg for k, v in times.items()},
                                      "max_abs_logit": scale, "agreement": agree}
    return res


# --------------------------------------------------------------------------------------------- 3. files

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


# --------------------------------------------------------------------------------------------- main

def print_times(what: str, labels: dict, times: dict[str, list[float]], apart: str, first: dict) -> None:
    """One row per entry: median, min..max of the timed rounds, and the untimed-or-first run apart."""
    w = max(map(len, labels.values()))
    print(f"   {what:<{w}}  {'median':>9}  {'min..max':>17}  {apart:>10}")
    for k, v in times.items():
        print(f"   {labels[k]:<{w}}  {sec(statistics.median(v))}  {min(v):7.2f}..{max(v):<7.2f}s  {sec(first[k])}")


def bench_model(model: str, work: Path, args, repeat: int, proc_repeat: int, runs_cfg: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    print(f"\n\n######## {model}   (work folder {work})")
    prep = prepare(model, work, args.plain_init)
    bns = f"{prep['bns_calibrated']} batch norms randomised + calibrated" if prep["bns_calibrated"] else "plain init"
    print(f"   prepared: {prep['tensors']} tensors, {prep['params']:,} parameters, resgraph init ({bns}) -> "
          f"torchvision (positional) -> tv.pth, {prep['prepare_s']:.1f} s, not timed")
    res: dict = {"params": prep["params"], "bns_calibrated": prep["bns_calibrated"]}
    print(f"\n== 1. compile time: {model}")
    res["process"], files = bench_processes(model, prep, work, proc_repeat)
    res["in_process"] = bench_in_process(model, prep, work, repeat)
    ref = REFERENCE.get(model)
    if ref:
        p, i = res["process"]["times"], res["in_process"]["times"]
        print("\n   reference, measured earlier on this machine kind (in process / whole process):")
        for e in EXPORTERS:
            print(f"      {e:<7} earlier {ref[e]['in_process_s']:.1f} s / {ref[e]['process_s']:.1f} s;"
                  f"  now {i[e]['median_s']:.2f} s / {p[e]['median_s']:.2f} s")
    if args.profile:
        res["profile"] = profile_compile(prep, work)
    print(f"\n== 2. ONNX Runtime CPU, {args.threads} intra-op threads: {model}")
    # start-up only: resgraph's --external-data form, the weights in a side file as dynamo writes them
    from resgraph.compile import compile_spec
    ext = compile_spec(str(ROOT / prep["spec"]), weights=str(prep["weights"]), out=str(work / "rg-ext"), external_data=True)
    res["session_start"], sessions = bench_sessions({**files, "rg --external-data": Path(ext.files["model.onnx"])},
                                                    args.threads, repeat)
    sessions.pop("rg --external-data")
    res["latency"] = bench_latency(model, sessions, prep["tv"], args.threads, runs_cfg)
    del sessions
    res["files"] = bench_files(files)
    gc.collect()
    return res


def summary(results: dict) -> None:
    print("\n\n== summary (ratios of medians; goal in brackets)")
    for m, r in results["models"].items():
        p, i = r["process"]["ratios"], r["in_process"]["ratios"]
        lat = r["latency"]["batches"]
        line = (f"   {m:<10} process: dynamo/rg {p['process_vs_dynamo']:.1f}x (>= {GOALS['process_vs_dynamo']:g}), "
                f"legacy/rg {p['process_vs_legacy']:.1f}x (>= {GOALS['process_vs_legacy']:g});  in process: "
                f"dynamo/rg {i['inproc_vs_dynamo']:.1f}x (>= {GOALS['inproc_vs_dynamo']:g}), legacy/rg "
                f"{i['inproc_vs_legacy']:.1f}x")
        print(line)
        for b, d in lat.items():
            rr = d["ratios_to_resgraph"]
            worst = max(v["max_abs_diff"] for k, v in d["agreement"].items() if k.endswith("eager"))
            print(f"   {'':<10} ORT batch {b}: latency / resgraph's: dynamo {rr.get('dynamo', float('nan')):.2f}, "
                  f"legacy {rr.get('legacy', float('nan')):.2f}, eager {rr['eager']:.2f};  "
                  f"max abs diff vs eager {worst:.2g}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", metavar="M", default=None,
                    help=f"specs/<M>.yaml with a torchvision namesake (default {' '.join(MODELS)}; "
                         f"--quick: {' '.join(QUICK_MODELS)})")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="timed rounds of the compile timings and session creations (default 5; --quick: 2, and 1 "
                         "round of whole processes after the warm-up)")
    ap.add_argument("--quick", action="store_true", help="smoke run: resnet18, few repeats, small latency budget (< 2 min)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of ONNX Runtime and torch (default 2)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--keep", metavar="DIR", help="keep the produced files in DIR/<model>/ (default: a temporary folder)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of one compile_spec call per model")
    ap.add_argument("--plain-init", action="store_true",
                    help="keep resgraph init's batch norms (weight 1, bias 0, mean 0, var 1) instead of randomising "
                         "and calibrating them")
    args = ap.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    proc_repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    for m in models:
        if not (ROOT / "specs" / f"{m}.yaml").is_file():
            ap.error(f"no spec specs/{m}.yaml")
    runs_cfg = ({"warmup": 2, "budget_s": 1.0, "min_runs": 5, "max_runs": 50, "blocks": 3} if args.quick else
                {"warmup": 3, "budget_s": 8.0, "min_runs": 10, "max_runs": 300, "blocks": 5})

    import torch
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results: dict = {"header": header(TITLE, args.threads, PACKAGES, "intra-op threads for ORT and eager"),
                     "quick": args.quick, "repeat": repeat,
                     "process_repeat": proc_repeat, "plain_init": args.plain_init, "goals": GOALS,
                     "reference": REFERENCE, "latency_runs": runs_cfg, "models": {}}
    keep = Path(args.keep).resolve() if args.keep else None
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)
    for m in models:
        if keep:
            results["models"][m] = bench_model(m, keep / m, args, repeat, proc_repeat, runs_cfg)
        else:
            with tempfile.TemporaryDirectory(prefix=f"resgraph-onnx-bench-{m}-") as tmp:
                results["models"][m] = bench_model(m, Path(tmp), args, repeat, proc_repeat, runs_cfg)
    summary(results)
    results["header"]["load_end"] = load()
    results["total_s"] = time.perf_counter() - t0
    print(f"\n   load average at end (1, 5, 15 min): {results['header']['load_end']}   "
          f"(start {results['header']['load_start']})")
    print(f"   benchmark took {results['total_s']:.1f} s")
    if keep:
        print(f"   files kept in {keep}")
    if json_path:
        write_json(json_path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
