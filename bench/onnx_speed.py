"""How fast is `resgraph compile`, and how good is its ONNX?  Side by side with torch.onnx.export; prints ratios, never asserts.

The same network three ways, with the same weights:

    resgraph compile specs/<m>.yaml --weights w.safetensors    (lowers resgraph's IR with the onnx package)
    torch.onnx.export(torchvision.models.<m>(), dynamo=True)   (torch.export + onnxscript: torch's default)
    torch.onnx.export(torchvision.models.<m>(), dynamo=False)  (the legacy TorchScript exporter)

for each of --models (default resnet50 and resnet152; --quick: resnet18 only).

0. Preparation, not timed.  `resgraph init specs/<m>.yaml -o w.safetensors` writes a seeded checkpoint.
   Its tensors go into torchvision.models.<m>() paired *by structure*, by resgraph's own importer
   (resgraph.backends.torch.importer.import_weights, on meta-device copies of both models; bench/_weights.py):
   both models' tensors in the order their forward uses them, each pair checked to be the same kind of
   tensor of the same shape in the same kind of layer (resgraph's `layer1.0.shortcut.conv` is torchvision's
   `layer1.0.downsample.0`); then verify_import runs both on one random input, which must agree.
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
        sys.executable), against a small script (bench/_tv_export.py, copied into the work folder as
        export.py; --keep keeps it) that imports torch and torchvision, builds torchvision.models.<m>(),
        loads tv.pth and calls torch.onnx.export with dynamo=True, and the same with dynamo=False.  One untimed warm-up each
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

import contextlib
import gc
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# bench/ is on sys.path when a script here runs
from _common import ROOT, arg_parser, console_script, footer, header, load, write_json
from _onnx_files import bench_files
from _ort_latency import bench_latency, bench_sessions
from _stats import medians, minimums, ms, range_rows, ratio_line, stats
from _timing import interleaved, run_process, time_call, time_processes, timer

MODELS = ("resnet50", "resnet152")
QUICK_MODELS = ("resnet18",)
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
PROG = "onnx_speed"


def sec(s: float) -> str:
    return f"{s:7.2f} s"


@contextlib.contextmanager
def quiet():
    """The exporters print progress lines and warnings (the legacy exporter's deprecation): hide them."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------- 0. preparation

def prepare(model: str, work: Path, plain_init: bool = False) -> dict:
    """w.safetensors (resgraph init, batch norms calibrated unless plain_init), the torchvision model with
    the same weights (paired by structure), tv.pth, export.py."""
    import torch
    from _weights import calibrate_bn, checkpoint_into_torchvision, save_as_checkpoint
    spec = f"specs/{model}.yaml"
    w = work / "w.safetensors"
    t0 = time.perf_counter()
    run_process([str(console_script(PROG)), "init", spec, "-o", str(w)], PROG)
    tv, keys = checkpoint_into_torchvision(spec, w, model, PROG)
    bns = 0
    if not plain_init:   # calibrate in torchvision's model, then write the result back as resgraph's checkpoint
        bns = calibrate_bn(tv)
        save_as_checkpoint(tv, keys, w, "batch norms randomised and calibrated by bench/onnx_speed.py")
    pth = work / "tv.pth"
    torch.save(tv.state_dict(), pth)
    script = work / "export.py"
    shutil.copyfile(Path(__file__).with_name("_tv_export.py"), script)
    return {"spec": spec, "weights": w, "pth": pth, "script": script, "tv": tv, "tensors": len(keys),
            "bns_calibrated": bns, "params": sum(p.numel() for p in tv.parameters()),
            "prepare_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------- 1. compile time

def print_ratios(label: str, times: dict[str, list[float]], goals: dict) -> dict:
    """exporter / resgraph for each exporter (label.format(e=...)), of the medians and of the minimums;
    returns the medians' ratios."""
    med, mn = medians(times), minimums(times)
    print()
    for e in EXPORTERS:
        print(ratio_line(label.format(e=e), med[e] / med["resgraph"], goals.get(e), mn[e] / mn["resgraph"]))
    return {e: med[e] / med["resgraph"] for e in EXPORTERS}


def bench_processes(model: str, prep: dict, work: Path, repeat: int) -> tuple[dict, dict]:
    py = sys.executable
    files = {"resgraph": work / "rg" / "model.onnx", "dynamo": work / "dynamo.onnx", "legacy": work / "legacy.onnx"}
    cmds = {
        "resgraph": [str(console_script(PROG)), "compile", prep["spec"], "--weights", str(prep["weights"]),
                     "-o", str(work / "rg")],
        "dynamo": [py, str(prep["script"]), model, str(prep["pth"]), str(files["dynamo"]), "dynamo"],
        "legacy": [py, str(prep["script"]), model, str(prep["pth"]), str(files["legacy"]), "legacy"],
    }
    labels = {"resgraph": "resgraph compile (console script)",
              "dynamo": "python export.py: torch.onnx.export dynamo=True",
              "legacy": "python export.py: torch.onnx.export dynamo=False"}
    print(f"\n   a/b. whole process, {repeat} round{'s' * (repeat != 1)} interleaved after one untimed warm-up each   (load {load()})")
    warm, times = time_processes(cmds, repeat, PROG)
    range_rows([(labels[k], v, sec(warm[k])) for k, v in times.items()], unit="s", width=7, digits=2,
               title="process", extra_title="warm-up")
    res = {"commands": {k: " ".join(c) for k, c in cmds.items()},
           "times": {k: stats(v, with_p90=True) | {"warm_up_s": warm[k]} for k, v in times.items()}}
    ratios = print_ratios("whole process: {e} / resgraph (medians)", times, {e: GOALS[f"process_vs_{e}"] for e in EXPORTERS})
    res["ratios"] = {f"process_vs_{e}": r for e, r in ratios.items()}
    return res, files


def bench_in_process(model: str, prep: dict, work: Path, repeat: int) -> dict:
    import torch
    from _tv_export import EXAMPLE_BATCH, export

    from resgraph.compile import compile_spec
    spec, tv, x = str(ROOT / prep["spec"]), prep["tv"], torch.randn(EXAMPLE_BATCH, 3, 224, 224)
    inproc = work / "inproc"
    inproc.mkdir(exist_ok=True)
    stages: list[dict] = []

    def rg():
        stages.append(compile_spec(spec, weights=str(prep["weights"]), out=str(inproc / "rg")).seconds)

    def exporter(mode):
        def call():
            with quiet():
                export(tv, x, inproc / f"{mode}.onnx", mode)
        return call

    calls = {"resgraph": rg, "dynamo": exporter("dynamo"), "legacy": exporter("legacy")}
    labels = {"resgraph": "resgraph.compile.compile_spec(...)",
              "dynamo": "torch.onnx.export(..., dynamo=True)",
              "legacy": "torch.onnx.export(..., dynamo=False)"}
    print(f"\n   c. in process: the call alone (model built and loaded), first call apart, then {repeat} rounds"
          f" interleaved   (load {load()})")
    cold = {k: time_call(fn, gc.collect) for k, fn in calls.items()}
    cold_stages = stages.pop()
    times = interleaved({k: timer(fn, gc.collect) for k, fn in calls.items()}, repeat, rotate=False)
    range_rows([(labels[k], v, sec(cold[k])) for k, v in times.items()], unit="s", width=7, digits=2,
               title="call", extra_title="first call")
    ratios = print_ratios("in process: {e} export / compile_spec (medians)", times, {"dynamo": GOALS["inproc_vs_dynamo"]})
    res = {"times": {k: stats(v, with_p90=True) | {"first_call_s": cold[k]} for k, v in times.items()},
           "ratios": {f"inproc_vs_{e}": r for e, r in ratios.items()},
           "first_call_ratios": {f"inproc_vs_{e}": cold[e] / cold["resgraph"] for e in EXPORTERS}}
    print(ratio_line("first calls: dynamo export / compile_spec", cold["dynamo"] / cold["resgraph"], None))
    res["compile_stages_s"] = print_stages(stages, cold_stages)
    return res


def print_stages(stages: list[dict], cold: dict) -> dict:
    """compile_spec's own per-stage seconds: medians over `stages`, the first call's in brackets."""
    keys = [k for k in stages[0] if k != "total"]
    med = {k: statistics.median(s[k] for s in stages) for k in keys + ["total"]}
    total = med["total"]
    print(f"\n   where compile_spec's time goes (its own .seconds, median of {len(stages)}; first call in brackets):")
    for k in keys:
        print(f"      {k:<8} {ms(med[k])}  {med[k] / total:5.1%}   [{ms(cold[k]).strip()}]")
    print(f"      {'total':<8} {ms(total)}           [{ms(cold['total']).strip()}]")
    return {"median": med, "first_call": cold, "runs": [{k: round(v, 6) for k, v in s.items()} for s in stages]}


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


# --------------------------------------------------------------------------------------------- main

def bench_model(model: str, work: Path, args, repeat: int, proc_repeat: int, runs_cfg: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    print(f"\n\n######## {model}   (work folder {work})")
    prep = prepare(model, work, args.plain_init)
    bns = f"{prep['bns_calibrated']} batch norms randomised + calibrated" if prep["bns_calibrated"] else "plain init"
    print(f"   prepared: {prep['tensors']} tensors, {prep['params']:,} parameters, resgraph init ({bns}) -> "
          f"torchvision (by structure) -> tv.pth, {prep['prepare_s']:.1f} s, not timed")
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
    res["latency"] = bench_latency(sessions, prep["tv"], args.threads, runs_cfg)
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
    ap = arg_parser(__doc__)
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
    footer(results, t0)
    if keep:
        print(f"   files kept in {keep}")
    write_json(json_path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
