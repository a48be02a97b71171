"""How fast is the module resgraph emits?  Side by side with torchvision's own model; prints ratios, never asserts.

What is measured, in one run, on one device, one dtype, one batch:

    resgraph.to_torch("specs/<model>.yaml")        (a torch.fx GraphModule)
    torchvision.models.<model>()                   (the hand-written nn.Module)

0. Parity.  torchvision's freshly initialised weights are copied into the resgraph module *by
   structure*, by resgraph's own importer (resgraph.backends.torch.importer.import_weights; see
   bench/_weights.py): both modules' tensors in the order their forward uses them, each pair checked to
   be the same kind of tensor of the same shape in the same kind of layer (only some names differ:
   resgraph's `layer1.0.shortcut.conv` is torchvision's `layer1.0.downsample.0`); a mismatch ends the
   run naming both sides.  Then, before any timing, both networks see the same batch: the max abs
   difference of the logits (eval mode, fp32; and again with the benchmark's --amp / --channels-last
   settings), and of the loss and of every parameter gradient (paired the same way) after one training
   forward + backward.  Outputs that differ end the run with exit status 1: timings of two different
   networks would mean nothing.

1. Throughput, images/s, four cells:

       eager    x inference   model.eval(), under torch.inference_mode()
       eager    x train step  model.train(): forward, cross-entropy loss, backward, SGD step
                              (lr 1e-3, momentum 0.9, fixed random batch and labels)
       compiled x inference   the same through torch.compile(model) (default inductor backend)
       compiled x train step  the same; the optimizer step stays eager, as in most training loops

   Each cell: warm-up iterations for both models first, then --repeat rounds; in each round both
   models run one timed block of the same number of iterations (sized from the warm-up so that a
   block takes about --block seconds), the order alternating round by round (tv, rg / rg, tv, ...)
   so that drift in machine load hits both alike.  Reported: the median img/s of each model, the
   ratio of the medians resgraph / torchvision with its goal (>= 0.97: compiling a spec should cost
   no speed against the hand-written model), and as the spread the min..max img/s of each model and
   of the per-round ratios.  A verdict below the goal says "within noise" when some round or the
   best blocks reach it; "(noisy)" marks a cell whose spread exceeds 25%.  On a shared machine
   noise only ever slows a block down, so the ratio of the *best* blocks is printed too; the two
   ratios far apart means the machine was busy.

2. Compile time, per model and phase (inference, train step): the wall time of the first call
   through torch.compile (tracing, inductor's code generation and C++/Triton compilation, plus one
   iteration), with the number of graphs and graph breaks dynamo saw.  It is reported separately
   and excluded from the throughputs.  A tiny throw-away model is compiled first, so the one-time
   cost of starting inductor is not charged to whichever network compiles first.  By default
   (--compile-cache cold) every compile gets a fresh, empty inductor cache: resgraph's graph lowers
   to the same kernels as torchvision's, so with a shared cache the second network to compile
   would reuse the first one's and look much faster.  --quick uses the ordinary on-disk cache
   (--compile-cache warm), so its compile times count cache hits; these are printed beside them.

3. With --profile, an op-level comparison of the eager modules (torch.profiler): how many aten ops
   each runs per inference and per train step, which ops only one of them calls (e.g. relu vs the
   in-place relu_, add vs add_, constant_pad_nd), and their self time; plus the emitted module's
   fx node counts (calls, getattr chains to reach submodules).  This is where to look when the
   eager ratio is below goal.

Run from the repository root:

    .venv/bin/python bench/torch_speed.py                         # resnet50; cuda if available, else cpu
    .venv/bin/python bench/torch_speed.py --quick                 # smoke run: resnet18, batch 4 (~1 min on 2 CPU cores)
    .venv/bin/python bench/torch_speed.py --model resnet18 --device cpu --batch 8 --channels-last --amp
    .venv/bin/python bench/torch_speed.py --no-compile --profile --json results.json

--model NAME pairs specs/NAME.yaml with torchvision.models.NAME (resnet18, resnet34, resnet50,
resnet101, resnet152); --spec PATH overrides the spec file.  Threads: torch.set_num_threads(--threads),
by default every core this process may use.  The load average is printed: on a machine busy with
other work, an OpenMP team of all cores stalls whenever one of its threads is descheduled, and
timings swing by several times (--threads 1 then gives steadier, if lower, numbers).

Compiling is slow on a small CPU: on 2 cores a cold compile of resnet50 took ~40 s (inference) and
~70-100 s (train step) per network, plus ~35 s of inductor start-up, and the whole default run about
13 minutes; each compile's time is printed as it finishes.  --quick (with its warm cache, once that
holds resnet18's kernels) took about 65 s on a lightly loaded 2-core machine and over 2 minutes on
a heavily loaded one; the first --quick run on a machine fills the cache (a minute or two more).

Exit status 0 unless the parity check fails or a model cannot be built; speed is never asserted.
"""
from __future__ import annotations

import gc
import logging
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# bench/ is on sys.path when a script here runs
from _common import (
    ROOT,
    arg_parser,
    cpu_name,
    load_average,
    resgraph,
    say,
    usable_cpus,
    write_json,
)
from _stats import spread_pct
from _timing import interleaved, time_call, timer

try:
    import torchvision
except ImportError:      # the whole comparison needs it
    raise SystemExit("torch_speed: torchvision is not installed for this interpreter") from None

from _torch_compile import CompileCache, first_call, prime_compiler, sync
from _torch_parity import autocast_ctx, build_models, parity

GOAL = 0.97              # resgraph img/s / torchvision img/s, medians
NOISY_PCT = 25          # a model's min..max img/s over the rounds wider than this % of its median: say so
LR, MOMENTUM = 1e-3, 0.9
CELLS = (("eager", "inference"), ("eager", "train step"), ("compiled", "inference"), ("compiled", "train step"))
PROG = "torch_speed"


def fmt_rate(r: float) -> str:
    return f"{r:,.1f}" if r < 1000 else f"{r:,.0f}"


# --------------------------------------------------------------------------------------------- steps

def make_inference(fwd, x, device, amp):
    ac = autocast_ctx(device, amp)

    def run(n: int) -> None:
        with torch.inference_mode(), ac():
            for _ in range(n):
                fwd(x)
    return run


class TrainStep:
    """forward + cross-entropy + backward + SGD step through `fwd` (the module or its compiled wrapper)."""

    def __init__(self, fwd, module, x, y, device, amp):
        self.fwd, self.x, self.y = fwd, x, y
        self.ac = autocast_ctx(device, amp)
        self.opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)
        self.scaler = torch.amp.GradScaler("cuda") if (amp and device.type == "cuda") else None
        self.last_loss = None

    def __call__(self, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with self.ac():
                loss = F.cross_entropy(self.fwd(self.x), self.y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            self.last_loss = loss


# --------------------------------------------------------------------------------------------- timing

def bench_cell(mode: str, phase: str, fns: dict, args, device, batch: int) -> dict:
    """Warm-up, size the blocks, then `repeat` interleaved rounds. fns: {'tv': run(n), 'rg': run(n)}."""
    def dev_sync():
        sync(device)

    for f in fns.values():
        f(args.warmup)
    per_iter = {k: time_call(lambda f=f: f(1), sync=dev_sync) for k, f in fns.items()}   # one more each, to size the blocks
    iters = max(1, min(args.max_iters, round(args.block / max(statistics.mean(per_iter.values()), 1e-9))))
    times = interleaved({k: timer(lambda f=f: f(iters), gc.collect, dev_sync) for k, f in fns.items()}, args.repeat)
    rates = {k: [batch * iters / t for t in ts] for k, ts in times.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    round_ratios = [a / b for a, b in zip(rates["rg"], rates["tv"], strict=False)]
    ratio = med["rg"] / med["tv"]
    if ratio >= GOAL:
        verdict = "meets goal"
    elif max(round_ratios) >= GOAL or best["rg"] / best["tv"] >= GOAL:
        verdict = "below, within noise"
    else:
        verdict = "BELOW GOAL"
    if max(spread_pct(rates["tv"]), spread_pct(rates["rg"])) > NOISY_PCT:
        verdict += f" (noisy: spread > {NOISY_PCT}%)"
    return {"mode": mode, "phase": phase, "iters_per_block": iters, "repeat": args.repeat,
            "tv_img_s": med["tv"], "rg_img_s": med["rg"], "ratio": ratio, "goal": GOAL, "verdict": verdict,
            "ratio_of_best": best["rg"] / best["tv"], "round_ratios": round_ratios,
            "tv_img_s_runs": rates["tv"], "rg_img_s_runs": rates["rg"],
            "tv_spread_pct": spread_pct(rates["tv"]), "rg_spread_pct": spread_pct(rates["rg"])}


def print_table(cells: list[dict]) -> None:
    say(f"\n   {'mode':<9} {'phase':<11} {'torchvision':>12} {'resgraph':>12} {'ratio':>7} {'goal':>7}  verdict")
    say(f"   {'':<9} {'':<11} {'img/s':>12} {'img/s':>12} {'rg/tv':>7}")
    for c in cells:
        say(f"   {c['mode']:<9} {c['phase']:<11} {fmt_rate(c['tv_img_s']):>12} {fmt_rate(c['rg_img_s']):>12} "
            f"{c['ratio']:7.3f} {'>= ' + str(GOAL):>7}  {c['verdict']}")
    say("\n   spread over the rounds (min..max img/s; per-round ratio rg/tv min..max; ratio of the best blocks)")
    for c in cells:
        tv, rg, rr = c["tv_img_s_runs"], c["rg_img_s_runs"], c["round_ratios"]
        say(f"   {c['mode']:<9} {c['phase']:<11} tv {fmt_rate(min(tv))}..{fmt_rate(max(tv))} ({c['tv_spread_pct']:.0f}%)"
            f"   rg {fmt_rate(min(rg))}..{fmt_rate(max(rg))} ({c['rg_spread_pct']:.0f}%)"
            f"   ratio {min(rr):.3f}..{max(rr):.3f}   best {c['ratio_of_best']:.3f}"
            f"   [{c['repeat']} x {c['iters_per_block']} it]")


# --------------------------------------------------------------------------------------------- main

def header(args, device, dtype_label: str, threads: int) -> dict:
    la = load_average()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    h = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
         "torchvision": torchvision.__version__, "resgraph": resgraph.__version__, "device": str(device),
         "device_name": dev_name, "cpus_usable": usable_cpus(), "threads": threads,
         "interop_threads": torch.get_num_interop_threads(), "batch": args.batch, "dtype": dtype_label,
         "channels_last": args.channels_last, "image_size": args.image_size, "model": args.model,
         "spec": str(args.spec), "load_average": la, "compile": not args.no_compile,
         "compile_cache": args.compile_cache, "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    if device.type == "cuda":
        h["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    say(f"resgraph emitted module vs torchvision: {args.model}")
    say(f"   torch     {h['torch']}   torchvision {h['torchvision']}   resgraph {h['resgraph']}   python {h['python']}")
    say(f"   device    {device}: {dev_name}")
    say(f"   threads   {threads} intra-op (of {h['cpus_usable']} usable cpus), {h['interop_threads']} inter-op")
    la_s = f"   load avg  {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}" if la else ""
    say(f"   batch     {args.batch} x 3 x {args.image_size} x {args.image_size}   dtype {dtype_label}"
        f"   memory format {'channels_last' if args.channels_last else 'contiguous'}"
        + (f"   cudnn.benchmark {h['cudnn_benchmark']}" if device.type == "cuda" else ""))
    if la_s:
        busy = device.type == "cpu" and la[0] > 0.75 * h["cpus_usable"]
        say(la_s + ("   (busy: other processes compete for the cores; expect wide spreads"
                    + ("; --threads 1 is steadier)" if threads > 1 else ")") if busy else ""))
    say(f"   spec      {args.spec}   compile {'off' if args.no_compile else 'inductor, ' + args.compile_cache + ' cache'}")
    return h


def parse_args(argv):
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default=None, help="torchvision model name, paired with specs/NAME.yaml "
                    "(default resnet50; resnet18 with --quick)")
    ap.add_argument("--spec", type=Path, default=None, help="spec file (default specs/<model>.yaml)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cuda if available, else cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 32 on GPU, 8 on CPU (--quick: 16 / 4)")
    ap.add_argument("--image-size", type=int, default=224, help="input height and width (default 224)")
    ap.add_argument("--channels-last", action="store_true", help="models and input in torch.channels_last")
    ap.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 (+ GradScaler) on GPU")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile cells")
    ap.add_argument("--compile-cache", choices=("cold", "warm"), default=None,
                    help="cold: each compile in a fresh empty inductor cache (default); warm: the usual on-disk "
                         "cache, shared between the two networks (default with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all usable cpus)")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="timed rounds per cell, each model once per round (default 7; 5 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up iterations per model and cell (default 3; 1 with --quick)")
    ap.add_argument("--block", type=float, default=None, metavar="S",
                    help="target seconds per timed block (default 2.0; 0.3 with --quick)")
    ap.add_argument("--max-iters", type=int, default=50, help="at most this many iterations per block")
    ap.add_argument("--profile", action="store_true", help="also compare the eager modules op by op (torch.profiler)")
    ap.add_argument("--quick", action="store_true", help="smoke run: resnet18, small batch, few short rounds, warm cache")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    gpu, q = args.device == "cuda", args.quick
    args.model = args.model or ("resnet18" if q else "resnet50")
    args.spec = args.spec or ROOT / "specs" / f"{args.model}.yaml"
    args.batch = args.batch or ((16 if q else 32) if gpu else (4 if q else 8))
    args.repeat = args.repeat if args.repeat is not None else (5 if q else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.block = args.block if args.block is not None else (0.3 if q else 2.0)
    args.compile_cache = args.compile_cache or ("warm" if q else "cold")
    for flag in ("batch", "repeat", "warmup", "max_iters", "image_size"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    if not args.spec.is_file():
        ap.error(f"no spec file {args.spec}")
    return args


def check_parity(args, device, results: dict):
    """Build both networks with the same weights and the batch; (tv, rg, x, y), or None where they differ."""
    torch.manual_seed(0)
    tv, rg, copied = build_models(args.model, args.spec, PROG)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    tv, rg = tv.to(device, memory_format=fmt), rg.to(device, memory_format=fmt)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(device, memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    ex = ", ".join(f"{a} <- {b}" for a, b in copied["renamed_examples"])
    say(f"\n== 0. parity: {copied['tensors']} state-dict tensors imported from torchvision by structure "
        f"({copied['params']:,} parameters; {copied['renamed']} names differ, e.g. {ex})")
    par = parity(tv, rg, x, y, device, args.amp, args.channels_last, copied["keys"])
    results["parity"] = par | {"copied": {k: v for k, v in copied.items() if k not in ("renamed_examples", "keys")}}
    e = par["eval_fp32"]
    say(f"   eval logits, fp32:          max abs diff {e['max_abs_diff']:.3g}   (max |logit| {e['max_abs_logit']:.3g})")
    if "eval_as_benchmarked" in par:
        e = par["eval_as_benchmarked"]
        say(f"   eval logits, as benchmarked: max abs diff {e['max_abs_diff']:.3g}   (max |logit| {e['max_abs_logit']:.3g})")
    t = par["train"]
    say(f"   train step: loss {t['loss_tv']:.6f} vs {t['loss_rg']:.6f} (diff {t['loss_abs_diff']:.3g}); "
        f"gradients max abs diff {t['grad_max_abs_diff']:.3g} (max |grad| {t['grad_max_abs']:.3g})")
    if not par["ok"]:
        say("   OUTPUTS DIFFER: the two modules are not the same network; no timing")
        return None
    say("   same network: outputs agree")
    return tv, rg, x, y


def run_cells(mode: str, fns: dict, models: dict, args, device) -> list[dict]:
    """The inference and train-step cells of `mode`, the models in each phase's train/eval mode."""
    cells = []
    for phase in ("inference", "train step"):
        for m in models.values():
            m.train(phase == "train step")
        say(f"   {mode} {phase} ...")
        cells.append(bench_cell(mode, phase, fns[phase], args, device, args.batch))
    return cells


def compiled_cells(args, device, models: dict, x, y, results: dict) -> tuple[list[dict], dict]:
    """Part 2 (the first call of each through torch.compile) and the compiled cells; (cells, train steps)."""
    cache = CompileCache(args.compile_cache)
    info: dict = {}
    try:
        say(f"\n== 2. torch.compile (inductor, {args.compile_cache} cache): first call of each, excluded from "
            "the throughputs")
        info["startup_s"] = prime_compiler(device, cache)
        say(f"   {'one-time start-up (tiny model)':<32} {info['startup_s']:8.1f} s")
        compiled = {k: torch.compile(m) for k, m in models.items()}
        fns = {"inference": {k: make_inference(c, x, device, args.amp) for k, c in compiled.items()},
               "train step": {k: TrainStep(c, models[k], x, y, device, args.amp) for k, c in compiled.items()}}
        for phase in ("inference", "train step"):
            for k in ("tv", "rg"):
                models[k].train(phase == "train step")
                label = f"{'torchvision' if k == 'tv' else 'resgraph'} {phase}"
                info[f"{k} {phase}"] = first_call(label, fns[phase][k], device, cache)
        cells = run_cells("compiled", fns, models, args, device)
    finally:
        cache.close()
    results["compile"] = info
    return cells, fns["train step"]


def throughput(args, device, tv, rg, x, y, results: dict) -> dict:
    """Parts 1 and 2: the eager cells, then (unless --no-compile) the compiled ones; the table; the last losses."""
    say(f"\n== 1. throughput: {args.repeat} interleaved rounds per cell after {args.warmup} warm-up iteration"
        f"{'s' * (args.warmup != 1)}; blocks of ~{args.block:g} s")
    models = {"tv": tv, "rg": rg}
    steps = {k: TrainStep(m, m, x, y, device, args.amp) for k, m in models.items()}
    eager = {"inference": {k: make_inference(m, x, device, args.amp) for k, m in models.items()},
             "train step": steps}
    cells = run_cells("eager", eager, models, args, device)
    results["compile"] = {}
    if not args.no_compile:
        more, steps_c = compiled_cells(args, device, models, x, y, results)
        cells += more
    print_table(cells)
    results["cells"] = cells
    losses = {k: s.last_loss.item() for k, s in steps.items() if s.last_loss is not None}
    if not args.no_compile:
        losses |= {f"{k} compiled": s.last_loss.item() for k, s in steps_c.items() if s.last_loss is not None}
    results["last_losses"] = losses
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    say("\n   last training loss: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
        + ("   NON-FINITE: timings may include slow denormal/NaN arithmetic" if bad else ""))
    return models


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    if gpu:
        torch.backends.cudnn.benchmark = True
    dtype_label = ("amp " + ("float16" if gpu else "bfloat16") + " (autocast; weights float32)") if args.amp else "float32"
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)   # "No CUDA runtime is found" on CPU hosts

    t_start = time.perf_counter()
    results: dict = {"header": header(args, device, dtype_label, threads), "quick": args.quick}
    built = check_parity(args, device, results)
    if built is None:
        write_json(args.json, results)
        return 1
    tv, rg, x, y = built
    models = throughput(args, device, tv, rg, x, y, results)
    if args.profile:
        from _torch_profile import bench_profile
        prof_fns = {"inference": {k: make_inference(m, x, device, args.amp) for k, m in models.items()},
                    "train step": {k: TrainStep(m, m, x, y, device, args.amp) for k, m in models.items()}}
        results["profile"] = bench_profile(prof_fns, models, device, rg, n=2 if args.quick else 3)

    la = load_average()
    results["load_average_end"] = la
    results["total_s"] = time.perf_counter() - t_start
    say(f"\n   benchmark took {results['total_s']:.1f} s" + (f"; load average at the end {la[0]:.2f}" if la else ""))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
