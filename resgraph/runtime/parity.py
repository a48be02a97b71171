"""`resgraph parity`: the same inputs through several back ends, every pair compared.

Tolerances are the test suite's (the compiler's proof):
    fp32 on both sides   max |a - b| <= 1e-4, or, where fp32 arithmetic itself is noisier than that
                         (deep nets with random weights), <= 4 x the fp32 noise floor: the torch
                         module in fp32 against the same module in fp64 on the same inputs
    fp16 or TF32 on either side   |a - b| <= 2e-2 x (1 + |reference|), element by element
    bf16 on either side           |a - b| <= 8e-2 x (1 + |reference|)
The reference of a pair is its first back end; torch-cpu (the checkpoint, unfolded, fp32) comes
first wherever it takes part, so a model.onnx altered after compiling fails against it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

FP32_ABS = 1e-4
FP32_NOISE_FACTOR = 4.0
HALF_REL = {"fp16": 2e-2, "tf32": 2e-2, "bf16": 8e-2}   # x (1 + |ref|); TF32 keeps fp16's 10-bit mantissa, bf16 7


@dataclass(frozen=True)
class Pair:
    reference: str
    other: str
    max_abs: float
    max_scaled: float            # max |a - b| / (1 + |reference|)
    top1_agreement: float | None  # share of inputs whose arg-max agrees (vector outputs)
    tolerance: str
    ok: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


def order(backends: list[str]) -> list[str]:
    """The checkpoint's torch module first: the reference of every pair it is in."""
    return sorted(backends, key=lambda b: (b != "torch-cpu", b != "torch-cuda"))


def run_all(sessions: dict, x: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    return {name: np.concatenate([s.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
            for name, s in sessions.items()}


def noise_floor(torch_session, x: np.ndarray, ref: np.ndarray) -> float:
    """max |fp32 - fp64| of the torch module on x: how far fp32 arithmetic itself is from exact."""
    import torch
    m = copy.deepcopy(torch_session.module).to("cpu").double()
    with torch.inference_mode():
        r64 = m(torch.from_numpy(x).double()).numpy()
    return float(np.abs(ref - r64).max())


def compare(outputs: dict[str, np.ndarray], precisions: dict[str, str], floor=None,
            fp32_rel: float | None = None) -> list[Pair]:
    """Every pair; `floor()` gives the fp32 noise floor on demand (None: no torch to measure it);
    without one, `fp32_rel` (if given) admits fp32 pairs within |a-b| <= fp32_rel (1 + |ref|)."""
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
            half = [HALF_REL[p] for p in (precisions[a], precisions[b]) if p in HALF_REL]
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
            pairs.append(Pair(a, b, max_abs, max_scaled, top1, tol, ok))
    return pairs


def gate(folder: str, options, batches: tuple[int, ...]) -> list[Pair]:
    """compile --engine's parity gate: the engine against ONNX Runtime and, where torch is installed,
    the checkpoint's PyTorch module, on random normalised inputs in batches of each size given (the
    profile's MIN, OPT and MAX); the tolerance is the engine precision's. Raises ArtifactError on any
    pair beyond it, and on any NaN or infinity in the engine's output (fp16 overflow) before comparing."""
    from ..errors import ArtifactError
    from .session import BACKENDS, open_session
    refs = [n for n in ("torch-cpu", "ort-cuda" if BACKENDS["ort-cuda"].probe(folder).ok else "ort-cpu")
            if BACKENDS[n].probe(folder).ok]
    sessions = {}
    try:
        for n in ["tensorrt", *refs]:
            sessions[n] = open_session(folder, n, options)
        shape = sessions["tensorrt"].input_shape
        x = np.random.default_rng(0).standard_normal((sum(batches), *shape), dtype=np.float32)
        outputs, start = {n: [] for n in sessions}, 0
        for b in batches:
            for n, s in sessions.items():
                outputs[n].append(s.run(x[start:start + b]))
            start += b
        outputs = {n: np.concatenate(v) for n, v in outputs.items()}
        where = f"{folder}/model.engine"
        if not np.isfinite(outputs["tensorrt"]).all():
            raise ArtifactError.at(where, f"the {sessions['tensorrt'].precision} engine's outputs hold NaN or "
                                   "infinity on random normalised inputs (fp16 overflow?)",
                                   "build with --precision fp32 or tf32 (or compile with --no-fold); --no-parity-gate "
                                   "skips this check")
        torch_ref = sessions.get("torch-cpu")
        floor = (lambda: noise_floor(torch_ref, x, outputs["torch-cpu"])) if torch_ref is not None else None
        # without torch there is no fp64 reference to measure fp32's own noise against: an fp32 engine
        # (other kernels, other summation orders) is then held to 1e-4 relative to the output's size
        pairs = compare({n: outputs[n] for n in order(list(outputs))}, {n: s.precision for n, s in sessions.items()},
                        floor, fp32_rel=None if floor is not None else FP32_ABS)
    finally:
        for s in sessions.values():
            s.close()
    bad = [p for p in pairs if not p.ok and "tensorrt" in (p.reference, p.other)]
    if bad:
        raise ArtifactError.at(where, "the engine fails the parity gate: " + "; ".join(
            f"{p.other} vs {p.reference}: max |a-b| {p.max_abs:.3g}, scaled {p.max_scaled:.3g} (needs {p.tolerance})"
            for p in bad), "compare precisions with resgraph parity FOLDER; --no-parity-gate keeps the engine anyway")
    return pairs
