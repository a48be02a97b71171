"""The accuracy gate: is the int8 model good enough to publish?

The fp32 inference graph and both int8 encodings run in ONNX Runtime's CPU provider on the same
inputs (the model.s8.onnx figures are ONNX Runtime's arithmetic for TensorRT's file, a proxy: a
TensorRT engine fuses differently).

- Labelled (`--eval DIR|digits`): top-1 of fp32 and int8 against the labels. Passes when
  int8 top-1 >= min_accuracy x fp32 top-1 (default 0.99: MLPerf's rule for ResNet-50).
- Unlabelled (the calibration inputs): top-1 agreement of int8 with fp32 (argmax over classes, or over
  channels per pixel for a dense output) >= min_agreement, and the output SQNR
  10 log10(sum ref^2 / sum (ref - q)^2) over every output >= min_sqnr dB.

Both encodings must pass. A failure is a QuantizationError listing the five layers whose
quantisation alone hurts most (quant/explain.py), each at its spec line; nothing is published.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import Diagnostic, Loc, ResgraphError


class QuantizationError(ResgraphError):
    """An int8 model that fails its accuracy gate: names the data it was measured on, then the layers
    whose quantisation hurts most, each at its spec line."""


@dataclass(frozen=True)
class Thresholds:
    min_accuracy: float = 0.99      # int8 top-1 / fp32 top-1, labelled
    min_agreement: float = 0.99     # top-1 agreement with fp32, unlabelled
    min_sqnr: float = 20.0          # dB, unlabelled


def session(model):
    """An ONNX Runtime CPU session of an in-memory model, every graph optimisation on (so QDQ runs on
    the integer kernels, as a deployment would run it)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def outputs(model, batches) -> list[np.ndarray]:
    """Every output of `model` for each of `batches` (of its first input), batch by batch: one list
    (batches may differ in size, a sized model's outputs too)."""
    sess = session(model)
    name = sess.get_inputs()[0].name
    return [o for b in batches for o in sess.run(None, {name: b})]


def sqnr_of(signal: float, noise: float) -> float:
    """10 log10(signal / noise) from the two sums of squares: inf when nothing differs, -inf when the
    reference is all zeros or the difference is not finite (a NaN or inf on one side)."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 and math.isfinite(noise) else -math.inf


def sqnr_db(ref: list[np.ndarray], q: list[np.ndarray]) -> float:
    """Signal-to-quantisation-noise ratio of q against ref, over every output, in dB (inf: identical)."""
    t = Tally()
    t.add(ref, q, None)
    return t.figures().sqnr_db


@dataclass(frozen=True)
class Figures:
    """One int8 model against fp32 on the gate's set."""
    agreement: float
    sqnr_db: float
    top1: float | None = None           # labelled only
    fp32_top1: float | None = None

    def passes(self, t: Thresholds) -> tuple[bool, str]:
        if self.top1 is not None:
            need = t.min_accuracy * self.fp32_top1
            return self.top1 >= need, (f"top-1 {100 * self.top1:.2f}% against fp32's {100 * self.fp32_top1:.2f}%, "
                                       f"{self.top1 / self.fp32_top1 if self.fp32_top1 else 0:.4f} of it "
                                       f"(the gate: >= {t.min_accuracy})")
        ok = self.agreement >= t.min_agreement and self.sqnr_db >= t.min_sqnr
        return ok, (f"top-1 agreement with fp32 {100 * self.agreement:.2f}% (the gate: >= {100 * t.min_agreement:g}%), "
                    f"output SQNR {self.sqnr_db:.1f} dB (the gate: >= {t.min_sqnr:g} dB)")


class Tally:
    """Streamed sums of one int8 model against fp32, batch by batch (bounded memory, whatever the set)."""

    def __init__(self):
        self.signal = self.noise = 0.0
        self.same = self.total = self.correct = self.fp32_correct = self.n = 0

    def add(self, ref: list[np.ndarray], q: list[np.ndarray], labels: np.ndarray | None) -> None:
        for r, o in zip(ref, q, strict=True):
            r64 = r.astype(np.float64)
            self.signal += float(np.sum(r64 * r64))
            self.noise += float(np.sum(np.square(r64 - o)))
            if r.ndim >= 2 and r.shape[1] >= 2:
                self.same += int((r.argmax(1) == o.argmax(1)).sum())
                self.total += r.argmax(1).size
        if labels is not None:
            self.correct += int((q[0].argmax(1) == labels).sum())
            self.fp32_correct += int((ref[0].argmax(1) == labels).sum())
            self.n += len(labels)

    def figures(self) -> "Figures":
        sq = sqnr_of(self.signal, self.noise)
        top = (self.correct / self.n, self.fp32_correct / self.n) if self.n else (None, None)
        return Figures(self.same / self.total if self.total else 1.0, sq, *top)


def measure(fp32_model, models: dict, batches, labels: np.ndarray | None = None) -> dict[str, Figures]:
    """{file: Figures} of each int8 model in `models` against `fp32_model`, streamed over `batches`
    (of the first input); `labels` (aligned with the batches' samples) for top-1."""
    ref_s = session(fp32_model)
    sessions = {f: session(m) for f, m in models.items()}
    name = ref_s.get_inputs()[0].name
    tallies = {f: Tally() for f in models}
    seen = 0
    for b in batches:
        ref = ref_s.run(None, {name: b})
        y = labels[seen:seen + len(b)] if labels is not None else None
        for f, s in sessions.items():
            tallies[f].add(ref, s.run(None, {name: b}), y)
        seen += len(b)
    return {f: t.figures() for f, t in tallies.items()}


def record(measured: dict, t: Thresholds, on: str, samples: int, labelled: bool) -> dict:
    """The manifest's quantization.gate: the set, the thresholds, each model's figures and verdict."""
    per = {}
    for f, fig in measured.items():
        ok, why = fig.passes(t)
        per[f] = {**{k: (None if v is None else round(v, 6)) for k, v in asdict(fig).items()}, "passed": ok, "why": why}
    return {"on": on, "samples": samples, "labelled": labelled, "thresholds": asdict(t), "models": per,
            "passed": all(p["passed"] for p in per.values())}


def failure(gate: dict, worst: list, where: str, method: str) -> QuantizationError:
    """The gate's failure as an error: the failing model's figures, then the five most sensitive layers
    (explain.Unit, SQNR alone), each at its spec line, and what to do."""
    bad = [f"{f}: {p['why']}" for f, p in gate["models"].items() if not p["passed"]]
    keep = " ".join(u.path for u, _ in worst[:3])
    others = "|".join(m for m in ("percentile", "minmax", "entropy") if m != method)
    first = Diagnostic(Loc(where, 0, 0), f"the int8 model fails its accuracy gate on {gate['on']}: " + "; ".join(bad),
                       f"keep the most sensitive layers float (--keep-float {keep}), calibrate on more or other inputs "
                       f"or by another method (--calibration-method {others}), or see every layer: resgraph quantize FOLDER "
                       "--explain --calibrate ...; nothing was written")
    notes = [Diagnostic(u.loc, f"quantising {u.path} ({u.op}) alone: output SQNR {s:.1f} dB", severity="note")
             for u, s in worst[:5]]
    return QuantizationError([first, *notes], ordered=True)
