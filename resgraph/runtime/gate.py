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
from .parity import FP32_ABS, Int8Rule, Pair, compare, fp64_outputs, order
from .session import BACKENDS, open_session


def gate(folder: str, options) -> list[tuple[str, Pair]]:
    """compile --engine's parity gate: the engine against ONNX Runtime and, where torch is installed,
    the checkpoint's PyTorch module, on random normalised inputs at each point of the engine's profile
    (engine.json's: every input at its MIN shapes, then OPT, then MAX), every output compared at the
    engine precision's tolerance (an int8 engine: parity's int8 rule on random inputs, Int8Rule: the
    accuracy gate's SQNR against ONNX Runtime on model.s8.onnx, the file it is built from; against the
    fp32 module and ort-cpu's model.onnx, reported). Returns (where: the point, its shapes and the
    output; the pair).
    Raises ArtifactError on any pair beyond it, and on any NaN or infinity in the engine's outputs
    (fp16 overflow) before comparing."""
    from ..backends.tensorrt.engine_json import read_engine_info
    points = profile_points(read_engine_info(folder).profile)
    refs = [n for n in ("torch-cpu", "ort-cuda" if BACKENDS["ort-cuda"].probe(folder).ok else "ort-cpu")
            if BACKENDS[n].probe(folder).ok]
    where = f"{folder}/model.engine"
    sessions, pairs, rng = {}, [], np.random.default_rng(0)
    try:
        for n in ["tensorrt", *refs]:
            sessions[n] = open_session(folder, n, options)
        if sessions["tensorrt"].manifest.quantization is not None and BACKENDS["ort-cpu"].probe(folder).ok:
            sessions[S8_REFERENCE] = s8_reference(folder, options)
        for label, shapes in points:
            feeds = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}
            outputs = {n: s.run_all(feeds) for n, s in sessions.items()}
            pairs += _compare_point(label, feeds, outputs, sessions, where)
    finally:
        for s in sessions.values():
            s.close()
    bad = [(w, p) for w, p in pairs if not p.ok and "tensorrt" in (p.reference, p.other)]
    if bad:
        raise ArtifactError.at(where, f"the engine fails the parity gate ({len(bad)} of {len(pairs)} comparisons): "
                               + "; ".join(f"at {w}, {p.other} vs {p.reference}: {p.figures()} (needs {p.tolerance})"
                                           for w, p in bad[:6]),
                               "compare precisions with resgraph parity FOLDER; --no-parity-gate keeps the engine anyway")
    return pairs


S8_REFERENCE = "ort-cpu:model.s8.onnx"


def s8_reference(folder: str, options):
    """ONNX Runtime's CPU provider on model.s8.onnx, the file an int8 engine is built from (the accuracy
    gate measured that file under this arithmetic): the engine's same-file reference, the one pair that
    random inputs can judge (parity.Int8Rule)."""
    from ..manifest import read_manifest
    from .ort import OrtSession
    manifest = read_manifest(folder)
    return OrtSession(folder, manifest, options, cuda=False, onnx_file=manifest.onnx_file("tensorrt"))


def profile_points(profile) -> list[tuple[str, dict]]:
    """(label, input name -> shape) at the profile's MIN, OPT and MAX (a point equal to an earlier one
    left out), e.g. ('MIN image 1x3x224x224', {'image': (1, 3, 224, 224)})."""
    from ..backends.tensorrt.profile import POINTS, dims_text
    out, seen = [], set()
    for pt in POINTS:
        shapes = {p.name: p.at(pt) for p in profile}
        key = tuple(shapes.items())
        if key not in seen:
            seen.add(key)
            out.append((f"{pt.upper()} " + ", ".join(f"{n} {dims_text(s)}" for n, s in shapes.items()), shapes))
    return out


def _compare_point(label: str, feeds: dict, outputs: dict, sessions: dict, where: str) -> list[tuple[str, Pair]]:
    """Every output's pairs at one point of the profile; an engine output holding NaN or infinity refused."""
    trt = outputs["tensorrt"]
    int8 = Int8Rule.of(sessions["tensorrt"].manifest, False, sessions)   # random inputs
    for name, y in trt.items():
        if not np.isfinite(y).all():
            raise ArtifactError.at(where, f"the {sessions['tensorrt'].precision} engine's output {name} holds NaN or "
                                   f"infinity at {label}, on random normalised inputs"
                                   + (" (fp16 overflow?)" if int8 is None else ""),
                                   ("requantize the folder (resgraph quantize), or compile it in fp32" if int8 else
                                    "build with --precision fp32 or tf32 (or compile with --no-fold)")
                                   + "; --no-parity-gate skips this check")
    torch_ref = sessions.get("torch-cpu")
    fp64: dict = {}

    def floor(name: str):
        """max |fp32 - fp64| of the torch module's output `name` here: fp32 arithmetic's own noise."""
        if not fp64:
            fp64.update(fp64_outputs(torch_ref, feeds))
        return float(np.abs(outputs["torch-cpu"][name] - fp64[name]).max())
    out = []
    for name in trt:
        # without torch there is no fp64 reference to measure fp32's own noise against: an fp32 engine
        # (other kernels, other summation orders) is then held to 1e-4 relative to the output's size
        pairs = compare({n: outputs[n][name] for n in order(list(outputs))},
                        {n: s.precision for n, s in sessions.items()},
                        (lambda name=name: floor(name)) if torch_ref is not None else None,
                        fp32_rel=None if torch_ref is not None else FP32_ABS, int8=int8)
        shown = label if len(trt) == 1 else f"{label}, output {name}"
        out += [(shown, p) for p in pairs]
    return out


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
    build_engine(folder, o, device_id, gate=lambda staged: gate(staged, Options(device_id=device_id)))
    return why
