"""The engine's parity gate, and the `--rebuild` step that runs it.

`compile --engine` and `engine build` run `gate` on the staged folder before publishing it; the
inference commands run `rebuild_stale` before opening a session when `--rebuild` is given, so that
opening a session never builds or republishes anything.
"""
from __future__ import annotations

import sys

import numpy as np

from ..errors import ArtifactError
from .base import Options
from .parity import FP32_ABS, Pair, compare, noise_floor, order
from .session import BACKENDS, open_session


def gate(folder: str, options, batches: tuple[int, ...]) -> list[Pair]:
    """compile --engine's parity gate: the engine against ONNX Runtime and, where torch is installed,
    the checkpoint's PyTorch module, on random normalised inputs in batches of each size given (the
    profile's MIN, OPT and MAX); the tolerance is the engine precision's. Raises ArtifactError on any
    pair beyond it, and on any NaN or infinity in the engine's output (fp16 overflow) before comparing."""
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


def rebuild_stale(folder: str, backend: str, device_id: int) -> str | None:
    """The `--rebuild` step: where `backend` (a --backend(s) value) may open the TensorRT engine and it cannot run here
    (another TensorRT, GPU or model.onnx, a damaged plan), rebuild it from model.onnx with the options
    it was built with (this machine's timing cache), gated, and republish the folder. Returns why it
    rebuilt, or None when there was nothing to do."""
    from dataclasses import replace

    from ..manifest import read_manifest
    from ..backends.tensorrt.build import build_engine
    from ..backends.tensorrt.engine_json import EngineMismatch, read_engine_info
    from .tensorrt import check_engine
    named = {b.strip() for b in backend.split(",")}
    if not named & {"auto", "all", "tensorrt", "trt"} or not BACKENDS["tensorrt"].probe(folder).ok:
        return None
    try:
        check_engine(folder, read_manifest(folder), device_id)
        return None
    except EngineMismatch as e:
        why = e.message
    recorded = read_engine_info(folder).options
    o = replace(recorded, timing_cache=None if recorded.timing_cache else "")   # the recorded path is the builder's
    print(f"resgraph: rebuilding {folder}/model.engine ({o.command_flags()}): {why}", file=sys.stderr)
    build_engine(folder, o, device_id, gate=lambda staged: gate(staged, Options(device_id=device_id), o.batch.sizes()))
    return why
