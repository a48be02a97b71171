"""`resgraph parity`: the same inputs through several back ends, every pair compared.

Tolerances are the test suite's (the compiler's proof):
    fp32 on both sides   max |a - b| <= 1e-4, or, where fp32 arithmetic itself is noisier than that
                         (deep nets with random weights), <= 4 x the fp32 noise floor: the torch
                         module in fp32 against the same module in fp64 on the same inputs
    fp16 or TF32 on either side   |a - b| <= 2e-2 x (1 + |reference|), element by element
    bf16 on either side           |a - b| <= 8e-2 x (1 + |reference|)
    int8 on either side (an int8 folder's ONNX Runtime and TensorRT back ends; its torch back ends run
    the float checkpoint, the fp32 reference): the thresholds its accuracy gate recorded
    (quantization.gate["thresholds"]: top-1 agreement, argmax over axis 1 per sample or per pixel,
    >= min_agreement, and output SQNR 10 log10(sum ref^2 / sum (ref - q)^2) >= min_sqnr dB), on real
    inputs (--inputs DIR). Random inputs are not what the model was calibrated on: noise clips at the
    calibrated ranges and its near-tied logits make agreement meaningless, so there a pair of two int8
    back ends running one file (ort-cpu and ort-cuda: model.onnx; tensorrt and ort-trt:
    model.s8.onnx) is held to the SQNR alone, and int8 against fp32, or against the other encoding
    (whose clipping ranges differ: noise beyond them clips differently), is reported, not judged
    (Int8Rule).
The reference of a pair is its first back end; torch-cpu (the checkpoint, unfolded, fp32) comes
first wherever it takes part, so a model.onnx altered after compiling fails against it.

Every output is compared on its own (its own tolerance, its own noise floor), and a model with size
variables at several sizes: by default three (default_sizes: the smallest valid, the valid one
nearest the middle, and the largest valid up to AFFORDABLE, 512, so that parity stays quick on
large ranges), or those --shape asks for. The report lists each (pair, output, size) and, under
"pairs", the worst of each back-end pair (a failing one first, then the largest max |a - b|; int8:
the lowest SQNR).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .base import random_batch

FP32_ABS = 1e-4
FP32_NOISE_FACTOR = 4.0
AFFORDABLE = 512     # the largest size parity runs at by default (models with size variables)
HALF_REL = {"fp16": 2e-2, "tf32": 2e-2, "bf16": 8e-2}   # x (1 + |ref|); TF32 keeps fp16's 10-bit mantissa, bf16 7


@dataclass(frozen=True)
class Int8Rule:
    """How a pair with an int8 side is judged: the gate's thresholds; `real`: the inputs are real
    (a folder), not random noise; `files`: the ONNX file each int8 back end runs."""
    min_agreement: float
    min_sqnr: float
    real: bool
    files: dict = field(default_factory=dict)
    recorded: bool = True        # False: the folder was not gated (--no-gate); the gate's defaults

    @classmethod
    def of(cls, manifest, real: bool, sessions: dict) -> "Int8Rule | None":
        """The rule of an int8 folder's manifest for these sessions (None for a float folder)."""
        if manifest.quantization is None:
            return None
        from ..quant.gate import Thresholds
        files = {n: getattr(s, "onnx", None) or manifest.onnx_file(n) for n, s in sessions.items()
                 if s.precision == "int8"}
        t = manifest.quantization.gate.get("thresholds")
        if not isinstance(t, dict):
            d = Thresholds()
            return cls(d.min_agreement, d.min_sqnr, real, files, recorded=False)
        return cls(float(t["min_agreement"]), float(t["min_sqnr"]), real, files)

    def same_file(self, a: str, b: str) -> bool:
        return a in self.files and self.files[a] == self.files.get(b)

    def to_json(self) -> dict:
        return {"min_agreement": self.min_agreement, "min_sqnr": self.min_sqnr, "inputs": "real" if self.real else
                "random", "files": self.files,
                "thresholds": "the gate's" if self.recorded else "defaults (the folder was not gated)"}

    def judge(self, ref: np.ndarray, got: np.ndarray, same_file: bool) -> tuple[bool, str, float | None, float]:
        """(ok, the tolerance in words, top-1 agreement or None (no class axis), SQNR dB) of one pair."""
        from ..quant.gate import sqnr_db
        agree = float(np.mean(ref.argmax(1) == got.argmax(1))) if ref.ndim >= 2 and ref.shape[1] >= 2 else None
        sqnr = sqnr_db([ref], [got])
        need_sqnr = f"SQNR >= {self.min_sqnr:g} dB"
        if self.real:
            ok = sqnr >= self.min_sqnr and (agree is None or agree >= self.min_agreement)
            return ok, f"top-1 agreement >= {100 * self.min_agreement:g}%, {need_sqnr} (int8 gate)", agree, sqnr
        if same_file:
            return sqnr >= self.min_sqnr, f"{need_sqnr} (one int8 file, random inputs)", agree, sqnr
        return True, "reported, not judged: random inputs (give --inputs DIR of real ones)", agree, sqnr


@dataclass(frozen=True)
class Pair:
    reference: str
    other: str
    max_abs: float
    max_scaled: float            # max |a - b| / (1 + |reference|)
    top1_agreement: float | None  # share of inputs whose arg-max agrees (vector outputs)
    tolerance: str
    ok: bool
    output: str | None = None    # which output (parity fills these in; compare() leaves them None)
    shape: str | None = None     # at which input size, HxW (models with size variables)
    rule: str = "fp32"           # fp32 | fp16 | tf32 | bf16 | int8: which precision's tolerance judged it
    agreement: float | None = None   # int8: top-1 agreement, per sample or per pixel (argmax over axis 1)
    sqnr_db: float | None = None     # int8: output SQNR of other against reference (None in JSON: identical)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        if d["sqnr_db"] is not None and not math.isfinite(d["sqnr_db"]):
            d["sqnr_db"] = None if d["sqnr_db"] > 0 else -1e9   # JSON has no infinity
        return d

    def figures(self) -> str:
        """The figures its rule judges, in words."""
        if self.rule == "int8":
            agree = "" if self.agreement is None else f"top-1 agreement {100 * self.agreement:.2f}%, "
            return f"{agree}SQNR {self.sqnr_db:.1f} dB"
        return f"max |a-b| {self.max_abs:.3g}, scaled {self.max_scaled:.3g}"


def order(backends: list[str]) -> list[str]:
    """The checkpoint's torch module first: the reference of every pair it is in."""
    return sorted(backends, key=lambda b: (b != "torch-cpu", b != "torch-cuda"))


def run_batches(sessions: dict, feeds: dict, batch_size: int) -> dict[str, dict[str, np.ndarray]]:
    """back end -> output name -> [N, ...]: every input (name -> [N, ...]) through each session,
    batch_size samples at a time."""
    from .pipeline import run_feeds
    n = len(next(iter(feeds.values())))
    out = {}
    for name, s in sessions.items():
        parts = [run_feeds(s, {k: v[i:i + batch_size] for k, v in feeds.items()}) for i in range(0, n, batch_size)]
        out[name] = {o: np.concatenate([p[o] for p in parts]) for o in parts[0]}
    return out


def noise_floor(torch_session, x: np.ndarray, ref: np.ndarray) -> float:
    """max |fp32 - fp64| of a one-input, one-output torch module on x: how far fp32 arithmetic itself is from exact."""
    y = fp64_outputs(torch_session, {torch_session.input_name: x})
    return float(np.abs(ref - y[torch_session.output_name]).max())


def fp64_outputs(torch_session, feeds: dict) -> dict[str, np.ndarray]:
    """The torch session's module in fp64 on the CPU: every output by name, for these inputs."""
    import torch
    m = copy.deepcopy(torch_session.module).to("cpu").double()
    with torch.inference_mode():
        y = m(*[torch.from_numpy(np.asarray(feeds[t.name])).double() for t in torch_session.inputs])
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    return {t.name: v.numpy() for t, v in zip(torch_session.outputs, ys)}


def compare(outputs: dict[str, np.ndarray], precisions: dict[str, str], floor=None,
            fp32_rel: float | None = None, int8: Int8Rule | None = None) -> list[Pair]:
    """Every pair; `floor()` gives the fp32 noise floor on demand (None: no torch to measure it);
    without one, `fp32_rel` (if given) admits fp32 pairs within |a-b| <= fp32_rel (1 + |ref|).
    A pair with an int8 side is judged by `int8` (Int8Rule.of the folder's manifest)."""
    names = list(outputs)
    pairs = []
    measured = None
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ref, got = outputs[a], outputs[b]
            diff = np.abs(got.astype(np.float64) - ref)
            max_abs = float(diff.max()) if diff.size else 0.0
            scaled = diff / (1 + np.abs(ref))
            max_scaled = float(scaled.max()) if diff.size else 0.0
            top1 = None
            if ref.ndim == 2 and ref.shape[1] > 1:
                top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
            sides = (precisions[a], precisions[b])
            half = [HALF_REL[p] for p in sides if p in HALF_REL]
            if "int8" in sides:
                assert int8 is not None, "an int8 session without the folder's Int8Rule"
                ok, tol, agree, sqnr = int8.judge(ref, got, int8.same_file(a, b))
                pairs.append(Pair(a, b, max_abs, max_scaled, top1, tol, ok, rule="int8", agreement=agree, sqnr_db=sqnr))
                continue
            if half:
                ok, tol = max_scaled <= max(half), f"|a-b| <= {max(half):g} (1 + |ref|)"
            elif max_abs <= FP32_ABS:
                ok, tol = True, f"max |a-b| <= {FP32_ABS:g}"
            elif floor is not None:
                measured = floor() if measured is None else measured
                bound = FP32_NOISE_FACTOR * measured
                ok, tol = max_abs <= bound, (f"max |a-b| <= {FP32_ABS:g}, or {FP32_NOISE_FACTOR:g} x the fp32 noise "
                                             f"floor {measured:.2e}")
            elif fp32_rel is not None:
                ok, tol = max_scaled <= fp32_rel, f"max |a-b| <= {FP32_ABS:g}, or |a-b| <= {fp32_rel:g} (1 + |ref|)"
            else:
                ok, tol = False, f"max |a-b| <= {FP32_ABS:g}"
            rule = max((p for p in sides if p in HALF_REL), key=HALF_REL.get, default="fp32")
            pairs.append(Pair(a, b, max_abs, max_scaled, top1, tol, ok, rule=rule))
    return pairs


def default_sizes(manifest) -> list[dict]:
    """parity's sizes for a model with size variables: per variable its smallest valid size, the
    valid size nearest the middle, and its largest valid size up to AFFORDABLE (its smallest where
    none is); each distinct combination once."""
    picks = {}
    for k, r in manifest.sizes.items():
        top = max((v for v in r.valid if v <= AFFORDABLE), default=r.valid[0])
        mid = min((v for v in r.valid if v <= top), key=lambda v: (abs(2 * v - r.valid[0] - top), v))
        picks[k] = (r.valid[0], mid, top)
    out = []
    for i in range(3):
        at = {k: p[i] for k, p in picks.items()}
        if at not in out:
            out.append(at)
    return out


def random_cases(source: str, session, sizes: list[dict]) -> tuple[list[tuple[str | None, dict]], str]:
    """`parity --inputs N`: N seeded random normalised samples of every input at each of `sizes`
    -> ([(the size's label, input name -> [N, ...])], what they are)."""
    from ..errors import OptionError
    from ..limits import MAX_PARITY_BYTES
    from .bench import shape_label
    n = int(source)
    if n < 1:
        raise OptionError.at("--inputs", "--inputs 0: nothing to compare", "give a count of at least 1, or a folder")
    cases = []
    for at in sizes:
        full = session.default_sizes(at)
        shapes = {t.name: t.at(full) for t in session.inputs}
        per = 4 * sum(math.prod(s) for s in shapes.values())
        if n * per > MAX_PARITY_BYTES:   # refused before allocating (10^9 inputs asked for 238 GiB)
            shown = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
            raise OptionError.at("--inputs", f"{n:,} random inputs of {shown} take {n * per / 2**30:,.1f} GiB",
                                 f"at most {max(1, MAX_PARITY_BYTES // per):,} of this model's inputs "
                                 f"({MAX_PARITY_BYTES >> 30} GiB); parity's figures settle within a few hundred")
        rng = np.random.default_rng(0)
        feeds = {t.name: random_batch(rng, (n, *shapes[t.name]), t.dtype) for t in session.inputs}
        cases.append((shape_label(shapes[session.input_name]) if session.sizes else None, feeds))
    kind = "pixels" if session.manifest.input.dtype == "uint8" else "normalised inputs"
    return cases, f"{n} random {kind} (seed 0)" + (f" at {len(cases)} sizes" if len(cases) > 1 else "")


def folder_cases(source: str, session) -> tuple[list[tuple[str | None, dict]], str, list[dict]]:
    """`parity --inputs DIR`: the images, .npy and .npz files of a folder through the preprocess,
    grouped by size (images of several sizes cannot share a batch) -> (cases, what, the failures)."""
    import os

    from ..errors import OptionError
    from .bench import shape_label
    from .inputs import Feeder, expand, no_inputs
    from .pipeline import decode_samples
    if not os.path.isdir(source):
        raise OptionError.at(source, "--inputs is neither a count nor a folder", "e.g. --inputs 32 or --inputs images/")
    items = expand([source], None, session.input_shape)
    decoded = decode_samples(items, Feeder.of(session))
    failed = [{"input": i.name, "error": d} for i, d in zip(items, decoded) if isinstance(d, str)]
    groups: dict = {}
    for d in decoded:
        if not isinstance(d, str):
            groups.setdefault(d.key, []).append(d)
    if not groups:
        raise no_inputs([source])
    cases = [(shape_label(g[0].feeds[session.input_name].shape) if session.sizes else None,
              {k: np.stack([d.feeds[k] for d in g]) for k in g[0].feeds}) for g in groups.values()]
    good = sum(len(g) for g in groups.values())
    return cases, f"{good} inputs from {source}" + (f" at {len(cases)} sizes" if len(cases) > 1 else ""), failed


def compare_case(shape: str | None, feeds: dict, outputs: dict, sessions: dict,
                 int8: Int8Rule | None = None) -> list[Pair]:
    """Every output's pairs on one case (one size); the fp32 noise floor measured once, if needed."""
    torch_ref = sessions.get("torch-cpu")
    fp64: dict = {}

    def floor(name: str) -> float:
        if not fp64:
            fp64.update(fp64_outputs(torch_ref, feeds))
        return float(np.abs(outputs["torch-cpu"][name] - fp64[name]).max())
    pairs = []
    for name in next(iter(outputs.values())):
        got = compare({b: outputs[b][name] for b in sessions}, {b: s.precision for b, s in sessions.items()},
                      (lambda name=name: floor(name)) if torch_ref is not None else None, int8=int8)
        pairs += [replace(p, output=name, shape=shape) for p in got]
    return pairs


def worst(pairs: list[Pair]) -> list[Pair]:
    """Each back-end pair's worst comparison: a failing one first, then the largest max |a - b| (int8: the
    lowest SQNR)."""
    out: dict = {}
    bad = lambda p: (not p.ok, -p.sqnr_db if p.rule == "int8" else p.max_abs)  # noqa: E731  (int8: lowest SQNR)
    for p in pairs:
        key = (p.reference, p.other)
        if key not in out or bad(p) > bad(out[key]):
            out[key] = p
    return list(out.values())


def parity(folder: str, backends: str, source: str, batch_size: int, options, shapes: list[dict] | None = None) -> dict:
    """`resgraph parity`: the same inputs through every back end that `backends` names (--backends:
    'all' or a list; ordered: the checkpoint's torch module first), every pair compared on every
    output at its tolerance, at every size of `shapes` (size-variable values; default: default_sizes)
    for random inputs. The report's `ok` is False when a pair is beyond it; `changed_since_compile`
    names the files that differ from the manifest's record."""
    from ..manifest import verify_artifacts
    from .foreign import manifest_of
    from .session import BackendError, named_backends, open_session
    names, skipped = named_backends(backends, folder, "--backends")
    names = order(names)
    if len(names) < 2:
        raise BackendError.at(backends, f"parity needs two back ends; usable here: {', '.join(names) or 'none'}",
                              ("; ".join(f"{s['backend']}: {s['install']}" for s in skipped if s.get("install"))
                               or "name two with --backends, e.g. --backends torch-cpu,ort-cpu")
                              + "; or compare one with recorded outputs: --reference FILE.npz (docs/inference.md)")
    manifest = manifest_of(folder)   # a compiled folder's, or a plain ONNX file's (runtime.foreign)
    sessions = {}
    try:
        for n in names:   # files changed since compiling are compared, and reported, not refused
            sessions[n] = open_session(folder, n, replace(options, verify=False))
        first = next(iter(sessions.values()))
        if source.isdigit():
            sizes = shapes or (default_sizes(manifest) if manifest.sizes else [{}])
            (cases, what), failed_inputs = random_cases(source, first, sizes), []
        else:
            cases, what, failed_inputs = folder_cases(source, first)
        int8 = Int8Rule.of(manifest, not source.isdigit(), sessions)
        pairs = [p for shape, feeds in cases
                 for p in compare_case(shape, feeds, run_batches(sessions, feeds, batch_size), sessions, int8)]
        described = {n: s.describe() for n, s in sessions.items()}
    finally:
        for s in sessions.values():
            s.close()
    return {"artifact": folder, "model": manifest.name, "precision": manifest.precision, "inputs": what,
            "shapes": [c[0] for c in cases if c[0] is not None], "backends": described,
            "pairs": [p.to_json() for p in worst(pairs)], "outputs": [p.to_json() for p in pairs],
            "changed_since_compile": verify_artifacts(folder, manifest), "failed_inputs": failed_inputs,
            "skipped": skipped, "int8": int8.to_json() if int8 else None, "ok": all(p.ok for p in pairs)}
