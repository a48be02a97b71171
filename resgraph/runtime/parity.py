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
import math
from dataclasses import dataclass, replace

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


def parity_inputs(source: str, input_shape: tuple, preprocess) -> tuple[np.ndarray, str, list[dict]]:
    """(the inputs, what they are, the inputs that failed to decode) for `parity --inputs SOURCE`:
    a count of seeded random normalised inputs, or a folder of images / .npy files."""
    import os

    from ..errors import OptionError
    from .inputs import expand, no_inputs
    from .pipeline import decode_batch
    if source.isdigit():
        from ..limits import MAX_PARITY_BYTES
        n, per = int(source), 4 * math.prod(input_shape)
        if n < 1:
            raise OptionError.at("--inputs", "--inputs 0: nothing to compare", "give a count of at least 1, or a folder")
        if n * per > MAX_PARITY_BYTES:   # refused before allocating (10^9 inputs asked for 238 GiB)
            raise OptionError.at("--inputs", f"{n:,} random inputs of {list(input_shape)} take {n * per / 2**30:,.1f} GiB",
                                 f"at most {max(1, MAX_PARITY_BYTES // per):,} of this model's inputs "
                                 f"({MAX_PARITY_BYTES >> 30} GiB); parity's figures settle within a few hundred")
        x = np.random.default_rng(0).standard_normal((n, *input_shape), dtype=np.float32)
        return x, f"{int(source)} random normalised inputs (seed 0)", []
    if not os.path.isdir(source):
        raise OptionError.at(source, "--inputs is neither a count nor a folder", "e.g. --inputs 32 or --inputs images/")
    items = expand([source], None, input_shape)
    decoded = decode_batch(items, preprocess)
    failed = [{"input": i.name, "error": d} for i, d in zip(items, decoded) if isinstance(d, str)]
    good = [d for d in decoded if not isinstance(d, str)]
    if not good:
        raise no_inputs([source])
    return np.stack(good), f"{len(good)} inputs from {source}", failed


def parity(folder: str, backends: str, source: str, batch_size: int, options) -> dict:
    """`resgraph parity`: the same inputs through every back end that `backends` names (--backends:
    'all' or a list; ordered: the checkpoint's torch module first), every pair compared at its tolerance. The report's `ok` is False when a pair
    is beyond it; `changed_since_compile` names the files that differ from the manifest's record."""
    from ..manifest import read_manifest, verify_artifacts
    from .session import BackendError, named_backends, open_session
    names, skipped = named_backends(backends, folder, "--backends")
    names = order(names)
    if len(names) < 2:
        raise BackendError.at(backends, f"parity needs two back ends; usable here: {', '.join(names) or 'none'}",
                              "; ".join(f"{s['backend']}: {s['install']}" for s in skipped if s.get("install"))
                              or "name two with --backends, e.g. --backends torch-cpu,ort-cpu")
    manifest = read_manifest(folder)
    sessions = {}
    try:
        for n in names:   # files changed since compiling are compared, and reported, not refused
            sessions[n] = open_session(folder, n, replace(options, verify=False))
        first = next(iter(sessions.values()))
        x, what, failed_inputs = parity_inputs(source, first.input_shape, first.preprocess)
        outputs = run_all(sessions, x, batch_size)
        torch_ref = sessions.get("torch-cpu")
        floor = (lambda: noise_floor(torch_ref, x, outputs["torch-cpu"])) if torch_ref is not None else None
        pairs = compare(outputs, {n: s.precision for n, s in sessions.items()}, floor)
        backends = {n: s.describe() for n, s in sessions.items()}
    finally:
        for s in sessions.values():
            s.close()
    return {"artifact": folder, "model": manifest.name, "precision": manifest.precision, "inputs": what,
            "backends": backends, "pairs": [p.to_json() for p in pairs],
            "changed_since_compile": verify_artifacts(folder, manifest), "failed_inputs": failed_inputs,
            "skipped": skipped, "ok": all(p.ok for p in pairs)}
