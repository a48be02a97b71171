"""How fast is `resgraph run`?  Side by side with a hand-written Pillow + onnxruntime loop; prints ratios, never asserts.

Everything runs on the CPU (ONNX Runtime's CPUExecutionProvider), with the same batch size and the same
number of ONNX Runtime intra-op threads (--threads, default: the CPUs this process may use) on both sides.
The reference is the loop a user would write without resgraph, written into the work folder as handloop.py
(--keep keeps it):

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

import argparse
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench/ is on sys.path when a script here runs
from _common import console_script, header, interleaved, load, usable_cpus, write_json

ROOT = Path(__file__).resolve().parent.parent
DIGITS_SPEC = "specs/digits_resnet.yaml"
DIGITS_WEIGHTS = "specs/weights/digits_resnet.safetensors"
RESNET_SPEC = "specs/resnet50.yaml"
JPEG_SIZES = ((500, 375), (375, 500), (640, 480), (333, 500), (500, 333), (480, 640), (500, 400), (400, 500),
              (800, 600), (500, 500), (600, 450), (1024, 768), (375, 500), (500, 375), (427, 640), (640, 427))
TITLE = "resgraph run vs a hand-written Pillow + onnxruntime loop: throughput, overlap, bench overhead (CPU)"
PACKAGES = ("onnxruntime", "numpy", "pillow", "torch", "scikit-learn")  # header versions, after resgraph
GOALS = {
    "throughput": 0.95,          # resgraph's inputs/s over the hand loop's: at least
    "overlap": 1.10,             # predict's wall time over max(decode alone, inference alone): at most
    "bench": (0.95, 1.05),       # bench's median latency over the bare loop's: within
    "top1": 1.0,                 # fraction of inputs whose top-1 agrees: at least
}

try:                     # importable for the imports inside the functions, and for _common.header
    import resgraph
except ImportError:      # not installed: use the checkout this script lives in
    sys.path.insert(0, str(ROOT))
    import resgraph  # noqa: F401


HANDLOOP = '''\
"""Written by bench/run_speed.py: the loop `resgraph run` is measured against (Pillow + onnxruntime, no resgraph).

    python handloop.py FOLDER IMAGES --kind digits|imagenet --batch-size B --threads T

prints one JSON line per input (the fields of `resgraph run --json`); run_speed.py also imports it and
calls classify() in process.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

DIGITS_MEAN, DIGITS_STD = np.float32(0.3), np.float32(0.38)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def digits(path):
    """[1, 8, 8] float32: greyscale, 8x8, / 255, (x - 0.3) / 0.38."""
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (8, 8):
            im = im.resize((8, 8), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / np.float32(255)
    return ((a - DIGITS_MEAN) / DIGITS_STD)[None]


def imagenet(path):
    """[3, 224, 224] float32: torchvision's Resize(256), CenterCrop(224), ToTensor(), Normalize(ImageNet)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        im = im.resize(size, Image.BILINEAR)
        w, h = im.size
        left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
        im = im.crop((left, top, left + 224, top + 224))
        a = np.asarray(im, dtype=np.float32) / np.float32(255)
    return (a.transpose(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD


TRANSFORMS = {"digits": digits, "imagenet": imagenet}


def session(model_path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


def batches(sess, paths, batch, transform):
    """(the batch's paths, its logits) for each batch, in order; decoding on this thread."""
    name = sess.get_inputs()[0].name
    for i in range(0, len(paths), batch):
        chunk = paths[i:i + batch]
        x = np.stack([transform(p) for p in chunk])
        yield chunk, sess.run(None, {name: x})[0]


def classify(sess, paths, batch, transform):
    """The logits of every input, [N, classes]."""
    return np.concatenate([y for _, y in batches(sess, paths, batch, transform)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("images")
    ap.add_argument("--kind", choices=sorted(TRANSFORMS), required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--top-k", type=int, default=5)
    a = ap.parse_args()
    with open(os.path.join(a.folder, "manifest.json"), encoding="utf-8") as f:
        labels = json.load(f).get("labels")
    paths = [os.path.join(a.images, n) for n in sorted(os.listdir(a.images)) if not n.startswith(".")]
    sess = session(os.path.join(a.folder, "model.onnx"), a.threads)
    out = sys.stdout
    for chunk, y in batches(sess, paths, a.batch_size, TRANSFORMS[a.kind]):
        z = y.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        best = np.argsort(-p, axis=1, kind="stable")[:, :a.top_k]      # best[:, 0]: the argmax
        for path, pi, bi in zip(chunk, p, best):
            top = [{"index": int(i), "label": labels[i] if labels is not None else str(int(i)),
                    "score": round(float(pi[i]), 6)} for i in bi]
            out.write(json.dumps({"input": path, "ok": True, "top": top}, ensure_ascii=False) + "\\n")


if __name__ == "__main__":
    main()
'''


# --------------------------------------------------------------------------------------------- helpers

def ms(s: float) -> str:
    return f"{s * 1e3:10.3f} ms"


def stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times),
            "times_s": [round(t, 6) for t in times]}


def cpu_snapshot() -> tuple[float, float | None, float]:
    """(wall clock, CPU seconds the whole machine has been busy, CPU seconds of this process and its children)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def others_since(snap) -> float | None:
    """CPUs used on average by other processes on this machine since `snap` (another job's tests, say):
    the machine's busy time less this benchmark's own; a figure well above 0 marks a noisy measurement."""
    wall, busy, own = cpu_snapshot()
    if busy is None or snap[1] is None or wall <= snap[0]:
        return None
    return max(0.0, ((busy - snap[1]) - (own - snap[2])) / (wall - snap[0]))


def others_text(o: float | None) -> str:
    return "n/a" if o is None else f"{o:.2f}"


def run_process(cmd: list[str], stdout_path: Path | None = None) -> float:
    """Wall time of one whole process, stdout to a file (or discarded); a failing command ends the benchmark."""
    with open(stdout_path, "wb") if stdout_path else open(os.devnull, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, check=False)
        dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr.decode(errors="replace")[-6000:])
        raise SystemExit(f"run_speed: command failed with exit status {p.returncode}: {' '.join(cmd)}")
    return dt


def print_rows(rows: list[tuple[str, list[float], str]]) -> None:
    """label, times (s), extra text: median, min..max."""
    w = max(len(r[0]) for r in rows)
    print(f"   {'':<{w}}  {'median':>13}  {'min..max':>23}")
    for label, v, extra in rows:
        print(f"   {label:<{w}}  {ms(statistics.median(v))}  {min(v) * 1e3:10.3f}..{max(v) * 1e3:<10.3f}ms  {extra}")


def load_handloop(work: Path):
    spec = importlib.util.spec_from_file_location("handloop", work / "handloop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ratio_text(r: float, goal) -> tuple[str, bool]:
    """The goal as text and whether r meets it: a float is a minimum, ('max', x) a maximum, (lo, hi) a band."""
    if isinstance(goal, tuple) and goal[0] == "max":
        return f"<= {goal[1]:.2f}x", r <= goal[1]
    if isinstance(goal, tuple):
        return f"{goal[0]:.2f}..{goal[1]:.2f}x", goal[0] <= r <= goal[1]
    return f">= {goal:.2f}x", r >= goal


# --------------------------------------------------------------------------------------------- 0. preparation

def prepare_digits(work: Path) -> dict:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    t0 = time.perf_counter()
    folder = work / "digits"
    run_process([str(console_script("run_speed")), "compile", DIGITS_SPEC, "--weights", DIGITS_WEIGHTS,
                 "-o", str(folder)])
    d = load_digits()
    png = work / "digits_png"
    png.mkdir()
    for i, (im, label) in enumerate(zip(d.images, d.target)):
        pixels = np.round(im * 255.0 / 16.0).astype(np.uint8)          # make_samples.py's to_png_pixels
        Image.fromarray(pixels, mode="L").save(png / f"{i:04d}_digit-{int(label)}.png")
    n = len(d.images)
    print(f"   compiled {DIGITS_SPEC} (trained weights) -> {folder}; wrote {n:,} digits as 8x8 greyscale PNGs "
          f"({time.perf_counter() - t0:.1f} s, not timed)")
    return {"folder": folder, "images": png, "kind": "digits", "n": n,
            "truth": {str(png / f"{i:04d}_digit-{int(t)}.png"): int(t) for i, t in enumerate(d.target)}}


def make_jpegs(out: Path, n: int, seed: int = 0) -> int:
    """n photograph-like JPEGs: gradients + low-frequency waves, shapes, pixel noise; quality 90."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        w, h = JPEG_SIZES[i % len(JPEG_SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            gx, gy = rng.uniform(-1, 1, 2)
            fx, fy = rng.uniform(0.3, 3.0, 2)
            img[..., c] = (rng.uniform(80, 170) + 70 * (gx * xx / w + gy * yy / h)
                           + 35 * np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + rng.uniform(0, 2 * np.pi)))
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(w // 10, w // 2)), y0 + int(rng.integers(h // 10, h // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif kind == 1:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
                draw.polygon(pts, fill=fill)
        im = im.filter(ImageFilter.GaussianBlur(1.5))                     # soft edges, as a lens gives
        a = np.asarray(im, dtype=np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)   # sensor noise
        path = out / f"img_{i:03d}.jpg"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(path, quality=90)
        total += path.stat().st_size
    return total


def prepare_resnet(work: Path, n: int) -> dict:
    t0 = time.perf_counter()
    folder = work / "resnet50"
    run_process([str(console_script("run_speed")), "compile", RESNET_SPEC, "-o", str(folder)])
    t1 = time.perf_counter()
    jpg = work / "jpeg"
    jpg.mkdir()
    size = make_jpegs(jpg, n)
    print(f"   compiled {RESNET_SPEC} (fresh init, seed 0) -> {folder} ({t1 - t0:.1f} s); wrote {n} JPEGs, "
          f"{size / n / 1024:.0f} KiB each on average, sizes {', '.join(f'{w}x{h}' for w, h in JPEG_SIZES[:min(n, 6)])}, "
          f"... ({time.perf_counter() - t1:.1f} s; not timed)")
    return {"folder": folder, "images": jpg, "kind": "imagenet", "n": n, "truth": None, "jpeg_bytes": size}


# --------------------------------------------------------------------------------------------- a. whole process

def read_top1(path: Path) -> dict[str, int]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out[d["input"]] = d["top"][0]["index"] if d.get("ok") else None
    return out


def whole_process(model: dict, work: Path, batch: int, threads: int, rounds: int) -> dict:
    n = model["n"]
    rg_out, hand_out = work / f"{model['kind']}_rg.jsonl", work / f"{model['kind']}_hand.jsonl"
    cmds = {
        "resgraph": ([str(console_script("run_speed")), "run", str(model["folder"]), str(model["images"]), "--json",
                      "--batch-size", str(batch), "--threads", str(threads)], rg_out),
        "hand": ([sys.executable, str(work / "handloop.py"), str(model["folder"]), str(model["images"]),
                  "--kind", model["kind"], "--batch-size", str(batch), "--threads", str(threads)], hand_out),
    }
    print(f"\n   a. whole process: {n:,} inputs, batch {batch}, {threads} intra-op threads; 1 untimed run each, then "
          f"{rounds} rounds interleaved   (load {load()})")
    print(f"      resgraph run {model['folder'].name} IMAGES --json --batch-size {batch} --threads {threads}")
    print(f"      python handloop.py {model['folder'].name} IMAGES --kind {model['kind']} --batch-size {batch} "
          f"--threads {threads}")
    for cmd, out in cmds.values():
        run_process(cmd, out)
    snap = cpu_snapshot()
    times = interleaved({k: (lambda c=c: run_process(*c)) for k, c in cmds.items()}, rounds)
    others = others_since(snap)
    print_rows([(f"{k:<9}", v, f"{n / statistics.median(v):10,.0f} inputs/s") for k, v in times.items()])
    rg, hand = read_top1(rg_out), read_top1(hand_out)
    same_inputs = list(rg) == list(hand)
    agree = sum(rg[k] == hand.get(k) and rg[k] is not None for k in rg)
    ratio = statistics.median(times["hand"]) / statistics.median(times["resgraph"])
    ratio_min = min(times["hand"]) / min(times["resgraph"])
    goal, met = ratio_text(ratio, GOALS["throughput"])
    print(f"   throughput resgraph / hand loop: {ratio:.3f}x   (from the minimums {ratio_min:.3f}x)   goal {goal}   "
          f"{'meets goal' if met else 'BELOW GOAL'}")
    print(f"   outputs: {len(rg):,} lines vs {len(hand):,}, same inputs in the same order: {same_inputs}; "
          f"top-1 agrees on {agree:,} of {n:,}")
    print(f"   other processes used {others_text(others)} of {os.cpu_count()} CPUs on average during the timed rounds")
    res = {"times": {k: stats(v) for k, v in times.items()}, "others_cpus": others,
           "inputs_per_s": {k: n / statistics.median(v) for k, v in times.items()},
           "ratio": ratio, "ratio_from_minimums": ratio_min, "same_inputs": same_inputs, "top1_agree": agree, "n": n}
    if model["truth"]:
        res["accuracy"] = {k: sum(d.get(p) == t for p, t in model["truth"].items()) / n for k, d in
                           (("resgraph", rg), ("hand", hand))}
        print(f"   accuracy against the true labels: resgraph {res['accuracy']['resgraph']:.2%}, "
              f"hand loop {res['accuracy']['hand']:.2%}")
    return res


# --------------------------------------------------------------------------------------------- b. in process

def in_process(model: dict, hl, batch: int, threads: int, rounds: int) -> dict:
    import numpy as np

    from resgraph.runtime import Options, expand, open_session, predict
    from resgraph.runtime.pipeline import decode_batch, default_workers

    n = model["n"]
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

    def timed(fn):
        def m():
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
        return m

    measure = {f"predict, workers={w}": timed(lambda w=w: list(predict(s, items, batch_size=batch, workers=w)))
               for w in workers}
    measure["hand loop"] = timed(lambda: hl.classify(hand_sess, paths, batch, transform))
    measure["decode alone"] = timed(decode_alone)
    measure["inference alone"] = timed(lambda: [s.run(x) for x in stacked])

    print(f"\n   b. in process: {n:,} inputs in {len(chunks)} batches of {batch}, {threads} intra-op threads, "
          f"{usable_cpus()} usable CPUs; one untimed pass each, then {rounds} rounds interleaved   (load {load()})")
    print(f"      s = open_session(folder, 'ort-cpu', Options(threads={threads})): {s.describe()}; "
          f"preprocess: {s.preprocess.describe()}")
    print(f"      expand([images], None, s.input_shape): {expand_s * 1e3:.1f} ms (not in the rows below); "
          f"default_workers() = {wd}")
    # untimed first pass of each, and the outputs for the agreement check
    rg_out = {w: np.stack([r.output for r in predict(s, items, batch_size=batch, workers=w)]) for w in workers}
    hand_logits = hl.classify(hand_sess, paths, batch, transform)
    for m in measure.values():
        m()
    snap = cpu_snapshot()
    times = interleaved(measure, rounds, before=gc.collect)
    others = others_since(snap)
    med = {k: statistics.median(v) for k, v in times.items()}
    print_rows([(k, v, f"{n / med[k]:10,.1f} inputs/s") for k, v in times.items()])
    dec, inf = med["decode alone"], med["inference alone"]
    ideal = max(dec, inf)
    print(f"   decode alone + inference alone = {(dec + inf) * 1e3:.1f} ms (no overlap); max of the two = "
          f"{ideal * 1e3:.1f} ms (perfect overlap); decoding is {dec / (dec + inf):.0%} of the sum")
    print(f"   other processes used {others_text(others)} of {os.cpu_count()} CPUs on average during the timed rounds")
    res: dict = {"others_cpus": others, "n": n, "batch": batch, "threads": threads, "default_workers": wd,
                 "expand_s": expand_s, "times": {k: stats(v) for k, v in times.items()},
                 "inputs_per_s": {k: n / v for k, v in med.items()}, "ideal_overlap_s": ideal, "workers": {}}
    hand_top1 = hand_logits.argmax(1)
    for w in workers:
        k = f"predict, workers={w}"
        thr = med["hand loop"] / med[k]
        thr_min = min(times["hand loop"]) / min(times[k])
        ov = med[k] / ideal
        g1, m1 = ratio_text(thr, GOALS["throughput"])
        g2, m2 = ratio_text(ov, ("max", GOALS["overlap"]))
        y = rg_out[w]
        agree = int((y.argmax(1) == hand_top1).sum())
        diff = float(np.abs(y.astype(np.float64) - hand_logits).max())
        print(f"   workers={w}: throughput predict / hand loop {thr:.3f}x (from the minimums {thr_min:.3f}x)   goal {g1}   "
              f"{'meets goal' if m1 else 'BELOW GOAL'}")
        print(f"   {'':<10}predict / max(decode, inference) {ov:.3f}x   goal {g2}   {'meets goal' if m2 else 'MISSES GOAL'}"
              f"   (predict / (decode + inference) {med[k] / (dec + inf):.3f}x)")
        print(f"   {'':<10}top-1 agrees with the hand loop on {agree:,} of {n:,}; max abs logit diff {diff:.3g}")
        res["workers"][str(w)] = {"throughput_ratio": thr, "throughput_ratio_from_minimums": thr_min,
                                  "overlap_ratio": ov, "vs_sum": med[k] / (dec + inf), "top1_agree": agree,
                                  "max_abs_diff": diff}
    if model["truth"]:
        truth = np.array([model["truth"][p] for p in paths])
        res["accuracy"] = {"resgraph": float((rg_out[workers[-1]].argmax(1) == truth).mean()),
                           "hand": float((hand_top1 == truth).mean())}
        print(f"   accuracy against the true labels: resgraph {res['accuracy']['resgraph']:.2%}, "
              f"hand loop {res['accuracy']['hand']:.2%}")
    if usable_cpus() <= 2:
        print(f"   note: {usable_cpus()} usable CPUs: the decoding threads and ONNX Runtime's {threads} intra-op threads "
              "compete for the same cores, so overlap can hide decoding only where inference leaves a core idle")
    s.close()
    return res


# --------------------------------------------------------------------------------------------- 3. bench vs bare

def bare_loop(sess, feed: dict, out_name: str, duration: float, warmup: float, min_iterations: int = 10) -> list[float]:
    run = sess.run
    end = time.perf_counter() + warmup
    run([out_name], feed)
    while time.perf_counter() < end:
        run([out_name], feed)
    clock = time.perf_counter
    lat = []
    end = clock() + duration
    while True:
        t0 = clock()
        run([out_name], feed)
        t1 = clock()
        lat.append(t1 - t0)
        if t1 >= end and len(lat) >= min_iterations:
            break
    return lat


def bench_case(name: str, folder: Path, batch: int, duration: float, warmup: float, threads: int, rounds: int) -> dict:
    """One model and batch size: bench() against the bare loop, `rounds` rounds interleaved, the order rotating."""
    import numpy as np
    import onnxruntime as ort

    from resgraph.runtime import Options, open_session
    from resgraph.runtime.bench import bench

    s = open_session(str(folder), "ort-cpu", Options(threads=threads))
    so = ort.SessionOptions()                 # the options resgraph's OrtSession sets
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    bare = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *s.input_shape), dtype=np.float32)   # bench's input
    feed = {s.input_name: x}
    meds: dict[str, list[float]] = {"bench": [], "bare": []}
    iters: dict[str, list[int]] = {"bench": [], "bare": []}

    def one_bench():
        r = bench(s, batch, duration, warmup)
        meds["bench"].append(r.latency_ms["median"] / 1e3)
        iters["bench"].append(r.iterations)

    def one_bare():
        lat = bare_loop(bare, feed, s.output_name, duration, warmup)
        meds["bare"].append(statistics.median(lat))
        iters["bare"].append(len(lat))

    fns = {"bench": one_bench, "bare": one_bare}
    snap = cpu_snapshot()
    for r in range(rounds):
        order = list(fns)[r % 2:] + list(fns)[:r % 2]
        for k in order:
            gc.collect()
            fns[k]()
    others = others_since(snap)
    mb, mr = statistics.median(meds["bench"]), statistics.median(meds["bare"])
    ratio = mb / mr
    goal, met = ratio_text(ratio, GOALS["bench"])
    print(f"\n   {name}, batch {batch}: {duration:g} s measured after {warmup:g} s warm-up, per round; "
          f"iterations per round: bench {iters['bench']}, bare {iters['bare']}")
    print_rows([("bench(session, ...)", meds["bench"], "median of the round medians"),
                ("bare sess.run loop ", meds["bare"], "")])
    print(f"   bench / bare: {ratio:.3f}x   goal {goal}   {'meets goal' if met else 'OUTSIDE GOAL'}   "
          f"(other processes used {others_text(others)} CPUs meanwhile)")
    s.close()
    return {"others_cpus": others, "bench_round_medians_s": meds["bench"], "bare_round_medians_s": meds["bare"],
            "bench_median_s": mb, "bare_median_s": mr, "ratio": ratio,
            "iterations": iters, "duration_s": duration, "warmup_s": warmup}


def bench_vs_bare(cases: list[tuple[str, Path, int, float, float]], threads: int, rounds: int) -> dict:
    print(f"\n\n== 3. resgraph.runtime.bench.bench vs a bare InferenceSession.run loop, {threads} intra-op threads, "
          f"{rounds} rounds interleaved   (load {load()})")
    return {f"{name} batch {batch}": bench_case(name, folder, batch, duration, warmup, threads, rounds)
            for name, folder, batch, duration, warmup in cases}


# --------------------------------------------------------------------------------------------- main

def summary(results: dict) -> list[dict]:
    rows = []

    def row(what, rg, ref, ratio, goal, others=None):
        g, met = ratio_text(ratio, goal)
        rows.append({"measurement": what, "resgraph": rg, "reference": ref, "ratio": ratio, "goal": g, "met": met,
                     "others_cpus": others})

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

    print("\n\n== summary (medians; ratio = resgraph over the reference: throughput ratios are resgraph's inputs/s over "
          "the reference's, time ratios resgraph's time over the reference's)")
    wm = max(len(r["measurement"]) for r in rows)
    wr = max(len(r["resgraph"]) for r in rows + [{"resgraph": "resgraph"}])
    wf = max(len(r["reference"]) for r in rows + [{"reference": "reference"}])
    print(f"   {'measurement':<{wm}}  {'resgraph':>{wr}}  {'reference':>{wf}}  {'ratio':>7}  {'goal':<12}  met?  "
          f"other CPUs busy")
    for r in rows:
        o = "" if r["measurement"].endswith("agreement (processes)") or "top-1" in r["measurement"] else \
            others_text(r["others_cpus"])
        print(f"   {r['measurement']:<{wm}}  {r['resgraph']:>{wr}}  {r['reference']:>{wf}}  {r['ratio']:6.3f}x  "
              f"{r['goal']:<12}  {'yes' if r['met'] else 'NO ':<4}  {o:>6}")
    missed = [r["measurement"] for r in rows if not r["met"]]
    print(f"   {len(rows) - len(missed)} of {len(rows)} goals met" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    print(f"   other CPUs busy: CPUs used on average by other processes during that measurement's timed rounds "
          f"(of {os.cpu_count()}); above ~0.2 the ratios are unreliable")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    threads = args.threads or usable_cpus()
    if repeat < 1:
        ap.error("--repeat must be at least 1")
    if threads < 1 or args.batch_size < 1 or args.resnet_batch < 1:
        ap.error("--threads, --batch-size and --resnet-batch must be at least 1")
    n_jpeg = 16 if args.quick else 64
    bench_cfg = {"digits": (0.3, 0.1), "resnet50": (0.6, 0.2)} if args.quick else \
                {"digits": (1.0, 0.3), "resnet50": (2.5, 0.5)}   # (duration, warm-up) seconds per round

    t0 = time.perf_counter()
    snap = cpu_snapshot()
    results: dict = {"header": header(TITLE, threads, PACKAGES, "ONNX Runtime intra-op threads"),
                     "quick": args.quick, "repeat": repeat, "goals": GOALS,
                     "batch_size": {"digits": args.batch_size, "resnet50": args.resnet_batch}, "models": {}}
    json_path = Path(args.json).resolve() if args.json else None
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="resgraph-run-bench-"))
    print(f"   work folder {work}{' (kept)' if args.keep else ''}")
    try:
        (work / "handloop.py").write_text(HANDLOOP, encoding="utf-8")
        hl = load_handloop(work)

        print(f"\n\n== 0. preparation   (load {load()})")
        digits = prepare_digits(work)
        resnet = prepare_resnet(work, n_jpeg)

        for name, model, batch, rounds in (("digits", digits, args.batch_size, 3 * repeat),
                                           ("resnet50", resnet, args.resnet_batch, repeat)):
            print(f"\n\n== {1 if name == 'digits' else 2}. {name}: resgraph run vs the hand loop")
            results["models"][name] = {"process": whole_process(model, work, batch, threads, rounds),
                                       "in_process": in_process(model, hl, batch, threads, rounds)}

        cases = [("digits", digits["folder"], 1, *bench_cfg["digits"]),
                 ("digits", digits["folder"], args.batch_size, *bench_cfg["digits"]),
                 ("resnet50", resnet["folder"], 1, *bench_cfg["resnet50"])]
        results["bench"] = bench_vs_bare(cases, threads, repeat)

        results["summary"] = summary(results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["header"]["load_end"] = load()
    results["total_s"] = time.perf_counter() - t0
    results["others_cpus"] = others_since(snap)
    print(f"\n   load average at end (1, 5, 15 min): {results['header']['load_end']}   "
          f"(start {results['header']['load_start']}); other processes used {others_text(results['others_cpus'])} "
          f"of {os.cpu_count()} CPUs on average during the whole run")
    print(f"   benchmark took {results['total_s']:.1f} s")
    if args.keep:
        print(f"   work folder kept: {work}")
    if json_path:
        write_json(str(json_path), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
