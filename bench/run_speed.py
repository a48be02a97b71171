"""How fast is `resgraph run`?  Side by side with a hand-written Pillow + onnxruntime loop; prints ratios, never asserts.

Everything runs on the CPU (ONNX Runtime's CPUExecutionProvider), with the same batch size and the same
number of ONNX Runtime intra-op threads (--threads, default: the CPUs this process may use) on both sides.
The reference is the loop a user would write without resgraph, bench/_handloop.py, copied into the work
folder as handloop.py (--keep keeps it):

    Pillow open -> convert("L" | "RGB") -> geometry -> np.float32 / 255 -> (x - mean) / std
      -> np.stack a batch -> onnxruntime.InferenceSession(model.onnx, intra_op_num_threads=T).run -> argmax

decoding sequentially on the calling thread.  As a script it prints one JSON line per input, with the same
fields as `resgraph run --json` (input, ok, the top-5 classes with label and softmax score; the softmax
computed per batch with numpy), so that both processes write the same amount to stdout.

0. Preparation, not timed.  The work folder is a tempfile.mkdtemp (deleted at the end unless --keep).
   - digits: `resgraph compile specs/digits_resnet.yaml --weights specs/weights/digits_resnet.safetensors`
     (the shipped, trained model), and all 1,797 scikit-learn digits written as 8-bit greyscale PNGs
     (pixel = round(v * 255 / 16), mode "L", as examples/digits/make_samples.py does), true label in the name.
   - resnet50: `resgraph compile specs/resnet50.yaml` without --weights (a seeded fresh init: the weights
     do not matter for speed), and 64 JPEGs (--quick: 16) of ImageNet-like sizes (500x375, 375x500,
     640x480, 333x500, ... up to 1024x768), quality 90, whose content is smooth gradients, random shapes
     and pixel noise (seeded), so that decoding costs what a photograph's does.  The spec's preprocess is
     torchvision's ImageNet eval transform: shorter side to 256 (the longer int(256 * long / short)),
     bilinear, centre crop 224 at int(round((h - 224) / 2)), / 255, ImageNet mean and std; the hand loop
     computes exactly that (its top-1 is checked against resgraph's on every input).

1. digits (1,797 PNGs, batch --batch-size, default 64) and 2. resnet50 (the JPEGs, batch --resnet-batch,
   default 8), each measured the same ways:
   a. Whole process, what a user waits for: `resgraph run FOLDER IMAGES --json --batch-size B --threads T`
      (the console script next to sys.executable) against `python handloop.py ...`, stdout of each to a
      file in the work folder.  One untimed run each first (OS file cache), then interleaved rounds with
      the order rotating.  Throughput = inputs / wall seconds of the process.
      Goal: resgraph's throughput >= 0.95x the hand loop's.
   b. In process, one session each opened beforehand (not timed):
        resgraph: s = resgraph.runtime.open_session(folder, "ort-cpu", Options(threads=T));
                  items = resgraph.runtime.expand([images], None, s.input_shape)   (timed once, apart);
                  list(resgraph.runtime.predict(s, items, batch_size=B, workers=W))
                  for W = 1 and W = pipeline.default_workers(T) (the CPUs T leaves, at most 4; 0 = in line);
        hand:     handloop.classify(session, paths, B, transform): the script's own loop, imported, on an
                  InferenceSession created with the same options as the script's;
        decode alone:    pipeline.decode_batch(chunk, s.preprocess) over every chunk of B, on one thread;
        inference alone: s.run(x) over the chunks, decoded and stacked beforehand.
      Goals: predict's throughput >= 0.95x the hand loop's; predict's wall time (decoding overlapped with
      inference) <= 1.1x max(decode alone, inference alone), the time a perfect overlap would take.
      On a machine with few cores (2 here, typically) the decoding threads and ONNX Runtime's T intra-op
      threads compete for the same cores: overlap can only win where one side leaves cores idle.
   The first pass of each in this process is untimed (sessions' first runs, thread pools, file cache);
   then interleaved rounds, the order rotating round by round.  digits' passes are short (a fraction of
   a second), so digits gets 3x --repeat rounds; resnet50 gets --repeat.
   Agreement: resgraph's top-1 against the hand loop's on every input, in process and between the two
   processes' outputs; digits also prints the accuracy against the true labels.

3. resgraph.runtime.bench.bench(session, batch, duration, warmup) (what `resgraph bench` reports) against a
   bare loop: a separately created onnxruntime.InferenceSession with the options resgraph's ort-cpu
   session uses (ORT_ENABLE_ALL, intra-op threads T), the same input array (bench's: standard normal,
   seed 0), warmed up as long, then InferenceSession.run timed alone with perf_counter per call for the
   same duration.  digits batch 1 and --batch-size, resnet50 batch 1; --repeat rounds, interleaved.
   Reported: the median (over rounds) of each round's median latency.  Goal: bench / bare within
   0.95..1.05 (bench adds nothing measurable to the latency it reports).

Run from the repository root:

    .venv/bin/python bench/run_speed.py --quick          # smoke run: fewer rounds, 16 JPEGs, short bench (< 1 min)
    .venv/bin/python bench/run_speed.py                  # default: 3 rounds (about 2 min on 2 cores)
    .venv/bin/python bench/run_speed.py --repeat 7 --json run.json --keep

Needs resgraph with onnxruntime, Pillow and numpy, plus scikit-learn (the digits) and torch (resgraph compile
without --weights initialises the network with torch).  The machine's load average is printed at the start,
at each section and at the end, and for every group of timed rounds the CPUs other processes kept busy
meanwhile (from /proc/stat, less this benchmark's own CPU time and its children's): timings from a busy
machine are noisy (noise only slows a run down, so the minimums are printed too).  Exit status 0 unless a
step fails.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# bench/ is on sys.path when a script here runs
from _bench_overhead import bench_vs_bare
from _common import (
    ROOT,
    arg_parser,
    console_script,
    cpu_snapshot,
    footer,
    header,
    load,
    others_since,
    others_text,
    usable_cpus,
    write_json,
)
from _stats import goal_row, goal_table, goal_text, medians, minimums, range_rows, stats
from _timing import interleaved, process_measures, timer
from _workloads import prepare_digits, prepare_resnet

TITLE = "resgraph run vs a hand-written Pillow + onnxruntime loop: throughput, overlap, bench overhead (CPU)"
PACKAGES = ("onnxruntime", "numpy", "pillow", "torch", "scikit-learn")  # header versions, after resgraph
GOALS = {
    "throughput": 0.95,          # resgraph's inputs/s over the hand loop's: at least
    "overlap": 1.10,             # predict's wall time over max(decode alone, inference alone): at most
    "bench": (0.95, 1.05),       # bench's median latency over the bare loop's: within
    "top1": 1.0,                 # fraction of inputs whose top-1 agrees: at least
}
PROG = "run_speed"


def load_handloop(work: Path):
    """bench/_handloop.py, copied into the work folder as handloop.py, imported from there."""
    shutil.copyfile(Path(__file__).with_name("_handloop.py"), work / "handloop.py")
    spec = importlib.util.spec_from_file_location("handloop", work / "handloop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def met_text(met: bool, missed: str = "BELOW GOAL") -> str:
    return "meets goal" if met else missed


# --------------------------------------------------------------------------------------------- a. whole process

def read_top1(path: Path) -> dict[str, int]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out[d["input"]] = d["top"][0]["index"] if d.get("ok") else None
    return out


def process_commands(model: dict, work: Path, batch: int, threads: int) -> tuple[dict, dict]:
    """(the two commands, the file each one's stdout goes to)."""
    cmds = {
        "resgraph": [str(console_script(PROG)), "run", str(model["folder"]), str(model["images"]), "--json",
                     "--batch-size", str(batch), "--threads", str(threads)],
        "hand": [sys.executable, str(work / "handloop.py"), str(model["folder"]), str(model["images"]),
                 "--kind", model["kind"], "--batch-size", str(batch), "--threads", str(threads)],
    }
    return cmds, {k: work / f"{model['kind']}_{'rg' if k == 'resgraph' else k}.jsonl" for k in cmds}


def whole_process(model: dict, work: Path, batch: int, threads: int, rounds: int) -> dict:
    n = model["n"]
    cmds, outs = process_commands(model, work, batch, threads)
    print(f"\n   a. whole process: {n:,} inputs, batch {batch}, {threads} intra-op threads; 1 untimed run each, then "
          f"{rounds} rounds interleaved   (load {load()})")
    print(f"      resgraph run {model['folder'].name} IMAGES --json --batch-size {batch} --threads {threads}")
    print(f"      python handloop.py {model['folder'].name} IMAGES --kind {model['kind']} --batch-size {batch} "
          f"--threads {threads}")
    measure = process_measures(cmds, PROG, outs)
    for m in measure.values():
        m()
    snap = cpu_snapshot()
    times = interleaved(measure, rounds)
    others = others_since(snap)
    med, mn = medians(times), minimums(times)
    range_rows([(f"{k:<9}", v, f"{n / med[k]:10,.0f} inputs/s") for k, v in times.items()])
    rg, hand = read_top1(outs["resgraph"]), read_top1(outs["hand"])
    same_inputs = list(rg) == list(hand)
    agree = sum(rg[k] == hand.get(k) and rg[k] is not None for k in rg)
    ratio, ratio_min = med["hand"] / med["resgraph"], mn["hand"] / mn["resgraph"]
    goal, met = goal_text(ratio, GOALS["throughput"])
    print(f"   throughput resgraph / hand loop: {ratio:.3f}x   (from the minimums {ratio_min:.3f}x)   goal {goal}   "
          f"{met_text(met)}")
    print(f"   outputs: {len(rg):,} lines vs {len(hand):,}, same inputs in the same order: {same_inputs}; "
          f"top-1 agrees on {agree:,} of {n:,}")
    print(f"   other processes used {others_text(others)} of {os.cpu_count()} CPUs on average during the timed rounds")
    res = {"times": {k: stats(v) for k, v in times.items()}, "others_cpus": others,
           "inputs_per_s": {k: n / m for k, m in med.items()},
           "ratio": ratio, "ratio_from_minimums": ratio_min, "same_inputs": same_inputs, "top1_agree": agree, "n": n}
    if model["truth"]:
        res["accuracy"] = {k: sum(d.get(p) == t for p, t in model["truth"].items()) / n for k, d in
                           (("resgraph", rg), ("hand", hand))}
        print_accuracy(res["accuracy"])
    return res


def print_accuracy(acc: dict) -> None:
    print(f"   accuracy against the true labels: resgraph {acc['resgraph']:.2%}, hand loop {acc['hand']:.2%}")


# --------------------------------------------------------------------------------------------- b. in process

def in_process_setup(model: dict, hl, batch: int, threads: int) -> dict:
    """The sessions (opened here, untimed), the inputs as expand() and the hand loop list them, and the
    measurements: predict at each worker count, the hand loop, decoding alone, inference alone."""
    import numpy as np

    from resgraph.runtime import Options, expand, open_session, predict
    from resgraph.runtime.pipeline import decode_batch, default_workers
    folder, images = str(model["folder"]), str(model["images"])
    s = open_session(folder, "ort-cpu", Options(threads=threads))
    hand_sess = hl.session(str(model["folder"] / "model.onnx"), threads)
    transform = hl.TRANSFORMS[model["kind"]]
    t0 = time.perf_counter()
    items = expand([images], None, s.input_shape)
    expand_s = time.perf_counter() - t0
    paths = [os.path.join(images, p) for p in sorted(os.listdir(images)) if not p.startswith(".")]
    assert [it.path for it in items] == paths, "expand() and the hand loop list different inputs"
    chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
    wd = default_workers(threads)
    workers = [1] if wd == 1 else [1, wd]

    def decode_alone():
        return [decode_batch(c, s.preprocess) for c in chunks]

    stacked = [np.stack(d) for d in decode_alone()]
    measure = {f"predict, workers={w}": timer(lambda w=w: list(predict(s, items, batch_size=batch, workers=w)))
               for w in workers}
    measure["hand loop"] = timer(lambda: hl.classify(hand_sess, paths, batch, transform))
    measure["decode alone"] = timer(decode_alone)
    measure["inference alone"] = timer(lambda: [s.run(x) for x in stacked])
    # the untimed first pass of each, with the outputs for the agreement check
    rg_out = {w: np.stack([r.output for r in predict(s, items, batch_size=batch, workers=w)]) for w in workers}
    hand_logits = hl.classify(hand_sess, paths, batch, transform)
    return {"s": s, "paths": paths, "chunks": chunks, "expand_s": expand_s, "default_workers": wd,
            "workers": workers, "measure": measure, "rg_out": rg_out, "hand_logits": hand_logits}


def worker_report(w: int, times: dict, ideal: float, dec_inf: float, y, hand_logits) -> dict:
    """predict with w workers against the hand loop (throughput, top-1, logits) and against a perfect overlap."""
    import numpy as np
    k = f"predict, workers={w}"
    med, mn = medians(times), minimums(times)
    thr, thr_min = med["hand loop"] / med[k], mn["hand loop"] / mn[k]
    ov = med[k] / ideal
    g1, m1 = goal_text(thr, GOALS["throughput"])
    g2, m2 = goal_text(ov, ("max", GOALS["overlap"]))
    agree = int((y.argmax(1) == hand_logits.argmax(1)).sum())
    diff = float(np.abs(y.astype(np.float64) - hand_logits).max())
    n = len(y)
    print(f"   workers={w}: throughput predict / hand loop {thr:.3f}x (from the minimums {thr_min:.3f}x)   goal {g1}   "
          f"{met_text(m1)}")
    print(f"   {'':<10}predict / max(decode, inference) {ov:.3f}x   goal {g2}   {met_text(m2, 'MISSES GOAL')}"
          f"   (predict / (decode + inference) {med[k] / dec_inf:.3f}x)")
    print(f"   {'':<10}top-1 agrees with the hand loop on {agree:,} of {n:,}; max abs logit diff {diff:.3g}")
    return {"throughput_ratio": thr, "throughput_ratio_from_minimums": thr_min, "overlap_ratio": ov,
            "vs_sum": med[k] / dec_inf, "top1_agree": agree, "max_abs_diff": diff}


def in_process(model: dict, hl, batch: int, threads: int, rounds: int) -> dict:
    n = model["n"]
    c = in_process_setup(model, hl, batch, threads)
    s = c["s"]
    print(f"\n   b. in process: {n:,} inputs in {len(c['chunks'])} batches of {batch}, {threads} intra-op threads, "
          f"{usable_cpus()} usable CPUs; one untimed pass each, then {rounds} rounds interleaved   (load {load()})")
    print(f"      s = open_session(folder, 'ort-cpu', Options(threads={threads})): {s.describe()}; "
          f"preprocess: {s.preprocess.describe()}")
    print(f"      expand([images], None, s.input_shape): {c['expand_s'] * 1e3:.1f} ms (not in the rows below); "
          f"default_workers() = {c['default_workers']}")
    for m in c["measure"].values():
        m()
    snap = cpu_snapshot()
    times = interleaved(c["measure"], rounds, before=gc.collect)
    others = others_since(snap)
    med = medians(times)
    range_rows([(k, v, f"{n / med[k]:10,.1f} inputs/s") for k, v in times.items()])
    dec, inf = med["decode alone"], med["inference alone"]
    ideal = max(dec, inf)
    print(f"   decode alone + inference alone = {(dec + inf) * 1e3:.1f} ms (no overlap); max of the two = "
          f"{ideal * 1e3:.1f} ms (perfect overlap); decoding is {dec / (dec + inf):.0%} of the sum")
    print(f"   other processes used {others_text(others)} of {os.cpu_count()} CPUs on average during the timed rounds")
    res: dict = {"others_cpus": others, "n": n, "batch": batch, "threads": threads,
                 "default_workers": c["default_workers"], "expand_s": c["expand_s"],
                 "times": {k: stats(v) for k, v in times.items()}, "inputs_per_s": {k: n / v for k, v in med.items()},
                 "ideal_overlap_s": ideal,
                 "workers": {str(w): worker_report(w, times, ideal, dec + inf, c["rg_out"][w], c["hand_logits"])
                             for w in c["workers"]}}
    if model["truth"]:
        import numpy as np
        truth = np.array([model["truth"][p] for p in c["paths"]])
        res["accuracy"] = {"resgraph": float((c["rg_out"][c["workers"][-1]].argmax(1) == truth).mean()),
                           "hand": float((c["hand_logits"].argmax(1) == truth).mean())}
        print_accuracy(res["accuracy"])
    if usable_cpus() <= 2:
        print(f"   note: {usable_cpus()} usable CPUs: the decoding threads and ONNX Runtime's {threads} intra-op threads "
              "compete for the same cores, so overlap can hide decoding only where inference leaves a core idle")
    s.close()
    return res


# --------------------------------------------------------------------------------------------- main

def summary_rows(results: dict) -> list[dict]:
    """One row per goal: measurement, resgraph's figure, the reference's, the ratio, the goal and whether met."""
    rows = []

    def row(*a):
        rows.append(goal_row(*a))

    for m, r in results["models"].items():
        p = r["process"]
        row(f"{m} a. whole process, inputs/s", f"{p['inputs_per_s']['resgraph']:,.0f}/s",
            f"{p['inputs_per_s']['hand']:,.0f}/s", p["ratio"], GOALS["throughput"], p["others_cpus"])
        row(f"{m} a. top-1 agreement (processes)", f"{p['top1_agree']}/{p['n']}", "hand loop",
            p["top1_agree"] / p["n"], GOALS["top1"])
        b = r["in_process"]
        ips = b["inputs_per_s"]
        for w, d in b["workers"].items():
            k = f"predict, workers={w}"
            row(f"{m} b. predict w={w} vs hand loop, inputs/s", f"{ips[k]:,.0f}/s", f"{ips['hand loop']:,.0f}/s",
                d["throughput_ratio"], GOALS["throughput"], b["others_cpus"])
            row(f"{m} b. predict w={w} vs max(decode, infer)", f"{b['times'][k]['median_s'] * 1e3:,.1f} ms",
                f"{b['ideal_overlap_s'] * 1e3:,.1f} ms", d["overlap_ratio"], ("max", GOALS["overlap"]), b["others_cpus"])
        w = list(b["workers"])[-1]
        row(f"{m} b. top-1 agreement (in process, w={w})", f"{b['workers'][w]['top1_agree']}/{b['n']}", "hand loop",
            b["workers"][w]["top1_agree"] / b["n"], GOALS["top1"])
    for k, d in results["bench"].items():
        row(f"bench {k}, median latency", f"{d['bench_median_s'] * 1e3:.3f} ms", f"{d['bare_median_s'] * 1e3:.3f} ms",
            d["ratio"], GOALS["bench"], d["others_cpus"])
    return rows


def summary(results: dict) -> list[dict]:
    rows = summary_rows(results)
    print("\n\n== summary (medians; ratio = resgraph over the reference: throughput ratios are resgraph's inputs/s over "
          "the reference's, time ratios resgraph's time over the reference's)")
    goal_table(rows)
    return rows


def parse_args(argv):
    ap = arg_parser(__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round (digits 3), 16 JPEGs, short bench durations (well under a minute)")
    ap.add_argument("--repeat", type=int, default=None, metavar="N",
                    help="interleaved rounds per measurement (default 3; --quick: 1); digits' short passes get 3N")
    ap.add_argument("--threads", type=int, default=None, metavar="T",
                    help=f"ONNX Runtime intra-op threads on both sides (default: the usable CPUs, here {usable_cpus()})")
    ap.add_argument("--batch-size", type=int, default=64, metavar="B", help="digits' batch size (default 64)")
    ap.add_argument("--resnet-batch", type=int, default=8, metavar="B", help="resnet50's batch size (default 8)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (compiled models, images, handloop.py, outputs)")
    args = ap.parse_args(argv)
    args.repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    args.threads = args.threads or usable_cpus()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.threads < 1 or args.batch_size < 1 or args.resnet_batch < 1:
        ap.error("--threads, --batch-size and --resnet-batch must be at least 1")
    return args


def run_all(args, work: Path, results: dict) -> None:
    """Parts 0 to 3 and the summary, into results."""
    n_jpeg = 16 if args.quick else 64
    bench_cfg = {"digits": (0.3, 0.1), "resnet50": (0.6, 0.2)} if args.quick else \
                {"digits": (1.0, 0.3), "resnet50": (2.5, 0.5)}   # (duration, warm-up) seconds per round
    hl = load_handloop(work)
    print(f"\n\n== 0. preparation   (load {load()})")
    digits = prepare_digits(work, PROG)
    resnet = prepare_resnet(work, n_jpeg, PROG)
    for name, model, batch, rounds in (("digits", digits, args.batch_size, 3 * args.repeat),
                                       ("resnet50", resnet, args.resnet_batch, args.repeat)):
        print(f"\n\n== {1 if name == 'digits' else 2}. {name}: resgraph run vs the hand loop")
        results["models"][name] = {"process": whole_process(model, work, batch, args.threads, rounds),
                                   "in_process": in_process(model, hl, batch, args.threads, rounds)}
    cases = [("digits", digits["folder"], 1, *bench_cfg["digits"]),
             ("digits", digits["folder"], args.batch_size, *bench_cfg["digits"]),
             ("resnet50", resnet["folder"], 1, *bench_cfg["resnet50"])]
    results["bench"] = bench_vs_bare(cases, args.threads, args.repeat, GOALS["bench"])
    results["summary"] = summary(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    snap = cpu_snapshot()
    results: dict = {"header": header(TITLE, args.threads, PACKAGES, "ONNX Runtime intra-op threads"),
                     "quick": args.quick, "repeat": args.repeat, "goals": GOALS,
                     "batch_size": {"digits": args.batch_size, "resnet50": args.resnet_batch}, "models": {}}
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="resgraph-run-bench-"))
    print(f"   work folder {work}{' (kept)' if args.keep else ''}")
    try:
        run_all(args, work, results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["others_cpus"] = others_since(snap)
    footer(results, t0, f"; other processes used {others_text(results['others_cpus'])} of {os.cpu_count()} CPUs "
                        "on average during the whole run")
    if args.keep:
        print(f"   work folder kept: {work}")
    write_json(json_path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
