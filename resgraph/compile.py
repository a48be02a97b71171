"""`resgraph compile`: a spec (+ weights) -> compiled/<name>/{model.onnx, weights.safetensors, spec.yaml,
manifest.json} (+ model.onnx.data with --external-data, and for any model of 2 GiB or more).

    check -> weights (a safetensors file, checked against the spec, flagged untrained if `resgraph
    init` made it; or a fresh seeded init, flagged untrained) -> inference passes (drop no-ops,
    spell out projections, fold bn unless --no-fold) -> ONNX -> validate -> write the artifacts
    atomically.

No torch import when weights come from a file: the checkpoint is memory-mapped (mapped.py) and its
tensors are zero-copy views; its byte-for-byte copy, its sha256 and a NaN/inf scan run in
background threads from the moment it is checked, beside the passes and the lowering, and
model.onnx is hashed in another while it is written (resnet50: ~0.2 s for 200 MB written and
hashed, on 2 cores).

Atomic: every artifact is written in full into a hidden staging folder on the output's filesystem,
which then takes the output folder's place whole (artifacts.Stage: a rename, or an exchange of the
two folders), or, where it cannot (a mount point, `-o .`), file by file with the manifest last. A crash, Ctrl-C or kill -9
while writing leaves the previous artifacts as they were and no partial file in the output
folder; a stale staging folder is removed by the next compile. (Files are not fsync'ed: this
protects against the process dying, not against the machine losing power mid-write; fsync of
two 100 MB files costs more than the whole compile.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .artifacts import Artifact, Manifest, Stage, TensorInfo, sha256_file, wait_for_cleanup, write_manifest
from .errors import OptionError, PathError, WeightsError

__all__ = ["Compiled", "compile_spec", "load_weights", "wait_for_cleanup"]


@dataclass
class Compiled:
    out: str
    files: dict[str, str]        # artifact -> path
    manifest: "Manifest"
    seconds: dict[str, float]


def load_weights(path: str, graph):
    """A safetensors checkpoint mapped into memory (zero-copy, see mapped.py), checked against
    the graph's tensor list."""
    from safetensors import SafetensorError

    from .mapped import open_mapped
    from .ops.count import state_dict_shapes
    from .fileio import check_regular
    check_regular(path, "weights", "check the path (resgraph init / train / import-weights make one)")
    try:
        mapped = open_mapped(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError.at(path, f"not a readable safetensors file: {e}", "weights are .safetensors files") from None
    tensors = mapped.tensors
    want = state_dict_shapes(graph)
    missing = [k for k in want if k not in tensors]
    wrong = [f"{k}: file {list(tensors[k].shape)}, spec {list(want[k])}" for k in want
             if k in tensors and tuple(tensors[k].shape) != want[k]]
    unexpected = [k for k in tensors if k not in want]
    # an integer or boolean tensor where the spec wants floats would be cast silently: refuse it
    # (bn's num_batches_tracked is the one integer tensor a checkpoint holds)
    wrong += [f"{k}: dtype {tensors[k].dtype}, the spec wants floats" for k in want
              if k in tensors and tensors[k].dtype.kind != "f" and not k.endswith("num_batches_tracked")]
    if missing or wrong or unexpected:
        parts = [f"{label} ({len(x)}): " + "; ".join(x[:5]) + (" ..." if len(x) > 5 else "")
                 for label, x in (("missing", missing), ("shape mismatch", wrong), ("unexpected", unexpected)) if x]
        raise WeightsError.at(path, "the weights do not fit the spec: " + " | ".join(parts),
                              "were they made for another spec? Rebuild them with resgraph init / train / import-weights")
    return mapped


def fresh_weights(graph, seed: int) -> dict:
    """A seeded initialisation by the spec's init: policies (needs torch)."""
    from .backends.torch import to_torch
    m = to_torch(graph, seed=seed)
    return {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}


def _write_error(e: OSError, out: str) -> PathError:
    """A failure to write the artifacts as a PathError named after the output folder (not the hidden
    staging folder the system names), with what to do."""
    from .fileio import os_error
    inside = e.filename is None or ".resgraph-" in str(e.filename)
    return os_error(e, out if inside else None)


def _nonfinite(tensors: dict) -> list[str]:
    """The floating-point tensors holding a NaN or an infinity (16 ms for resnet50, in the background)."""
    import numpy as np
    return [k for k, v in tensors.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]


def _check_statistics(w: dict, nonfinite: list[str], where: str) -> None:
    """The checkpoint's values, before anything is computed from them: all finite, and every batch
    norm variance >= 0 (a negative one folds into NaN weights: a model that answers NaN)."""
    import numpy as np
    if nonfinite:
        raise WeightsError.at(where, f"the weights are not all finite: NaN or inf in {len(nonfinite)} tensor(s): "
                              + ", ".join(nonfinite[:5]) + (" ..." if len(nonfinite) > 5 else ""),
                              "a diverged training run? Compile an earlier checkpoint (resgraph train keeps "
                              "best.safetensors and epoch-NNN.safetensors)")
    negative = [f"{k} (min {float(np.min(v)):.3g})" for k, v in w.items()
                if k.endswith("running_var") and v.size and float(np.min(v)) < 0]
    if negative:
        raise WeightsError.at(where, f"negative batch-norm variance in {len(negative)} tensor(s): "
                              + ", ".join(negative[:5]) + (" ..." if len(negative) > 5 else ""),
                              "a variance is never negative: a damaged or hand-edited checkpoint? Re-export it "
                              "from training")


def _check_fp16(model, big: dict, fp32: dict, where: str) -> None:
    """fp16 holds |x| <= 65504: a weight beyond it (bn folding multiplies by gamma / sqrt(var + eps))
    would become inf, and the model would answer inf or NaN."""
    from onnx import TensorProto, numpy_helper
    small = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16}
    bad = _nonfinite({**big, **small})
    if bad:
        import numpy as np
        worst = ", ".join(f"{k} (|w| up to {float(np.abs(fp32[k]).max()):.3g})" if k in fp32 else k for k in bad[:5])
        raise WeightsError.at(where, f"{len(bad)} tensor(s) overflow fp16 (|x| > 65504): {worst}"
                              + (" ..." if len(bad) > 5 else ""),
                              "compile with --precision fp32, or with --no-fold (folding bn multiplies a layer's "
                              "weights by gamma / sqrt(running_var + eps))")


def compile_spec(spec_path: str, weights: str | None = None, out: str | None = None, precision: str = "fp32",
                 opset: int | None = None, fold: bool = True, seed: int = 0, external_data: bool = False,
                 progress=None, engine=None, engine_device: int = 0, gate=None, verbose: bool = False) -> Compiled:
    """`engine`: BuildOptions of a TensorRT engine to build from the staged model.onnx and publish with
    the rest (its precision: fp16 -> the fp16 model.onnx; fp32, tf32, bf16 -> the fp32 one); `gate(staged
    folder)` may then refuse the set before anything is published (compile --engine's parity gate)."""
    from . import __version__
    from .frontend import check_file
    step = progress or (lambda name: None)
    t = {"start": time.perf_counter()}

    step("checking the spec")
    checked = check_file(spec_path)
    spec, graph = checked.spec, checked.graph
    from .backends.onnx import DEFAULT_OPSET, OPSETS, validate
    from .backends.onnx.lower import build
    from .backends.onnx.writer import PROTOBUF_LIMIT, model_bytes, write_external, write_model
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise OptionError.at("--opset", f"opset {opset} is not supported",
                             f"choose {OPSETS.start} to {OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    if precision not in ("fp32", "fp16"):
        raise OptionError.at("--precision", f"unknown precision '{precision}'",
                             "fp32 or fp16 (tf32 and bf16: with --engine)")
    if engine is not None:   # before any work: TensorRT present, and the precision buildable on its version
        from .backends.tensorrt.build import import_tensorrt
        from .backends.tensorrt.options import typing_plan, version_tuple
        typing_plan(engine.precision, precision, version_tuple(import_tensorrt().__version__), "--precision")
    out = out or os.path.join("compiled", spec.name)
    target = os.path.realpath(out) if os.path.islink(out) else out   # Stage works on the real folder
    parent = os.path.dirname(os.path.abspath(target))
    if os.path.exists(out) and not os.path.isdir(out):
        raise PathError.at(out, "the output path is a file", "give a folder: -o compiled/NAME")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PathError.at(parent, f"cannot create the output folder: {e.strerror}",
                           "choose a writable place with -o") from None
    t["check"] = time.perf_counter()

    import numpy as np
    try:
        stage = Stage(out)
    except OSError as e:   # read-only, no permission, /proc/...: nothing was written
        raise _write_error(e, out) from None
    files = {name: stage.file(name) for name in ("model.onnx", "weights.safetensors", "spec.yaml", "manifest.json")}
    # Copying and hashing the checkpoint depend on nothing else: they run in the background from
    # here, beside the passes and the lowering (both release the GIL).
    pool = ThreadPoolExecutor(2, thread_name_prefix="resgraph-compile")
    try:
        step("loading weights" if weights else "initialising weights")
        if weights:
            mapped = load_weights(weights, graph)
            trained = mapped.metadata.get("untrained") != "true"   # resgraph init marks its checkpoints
            w = mapped.tensors
            weights_sha = pool.submit(lambda: hashlib.sha256(mapped.buffer).hexdigest())
            copied = pool.submit(shutil.copyfile, weights, files["weights.safetensors"])   # in the kernel
            nonfinite = pool.submit(_nonfinite, w)
        else:
            trained = False
            w = {k: np.asarray(v) for k, v in fresh_weights(graph, seed).items()}
        t["weights"] = time.perf_counter()

        if weights:   # before folding, which would turn these into NaN weights (and fp16 call them overflow)
            _check_statistics(w, nonfinite.result(), weights)
        step("inference passes")
        from .passes.inference import for_inference
        from .passes.verify import verify
        igraph, iw = for_inference(graph, w, fold=fold)
        verify(igraph)
        folded_bad = _nonfinite(iw) if fold else []
        if folded_bad:
            raise WeightsError.at(weights or spec_path, f"folding batch norm gives NaN or inf in {len(folded_bad)} "
                                  "tensor(s): " + ", ".join(folded_bad[:5]) + (" ..." if len(folded_bad) > 5 else ""),
                                  "gamma / sqrt(running_var + eps) overflows for these layers: check the checkpoint's "
                                  "batch norm statistics, or compile with --no-fold")
        t["passes"] = time.perf_counter()

        step("lowering to ONNX")
        from .runtime.preprocess import Preprocess
        pre = Preprocess.resolve(spec.preprocess, graph.nodes[0].shape).to_json()
        meta = {"resgraph.spec": spec.name, "resgraph.spec_sha256": spec.sha256, "resgraph.version": __version__,
                "resgraph.projections": json.dumps([p.to_json() for p in graph.projections]),
                "resgraph.preprocess": json.dumps(pre),
                "resgraph.labels": json.dumps(list(spec.labels) if spec.labels is not None else None),
                "resgraph.precision": precision, "resgraph.folded": str(fold).lower(),
                "resgraph.trained": str(trained).lower()}
        model, big = build(igraph, iw, opset=opset, precision=precision, metadata=meta)
        if precision == "fp16":
            _check_fp16(model, big, iw, weights or spec_path)
        validate(model, igraph, streamed=big)
        t["onnx"] = time.perf_counter()

        step("writing artifacts")
        # one protobuf message cannot hold 2 GiB: such a model must keep its weights beside it
        external = external_data or model_bytes(model, big) >= PROTOBUF_LIMIT
        if external:
            files["model.onnx.data"] = stage.file("model.onnx.data")
            (model_sha, _), (data_sha, _) = write_external(files["model.onnx"], model, big, "model.onnx.data")
        else:
            model_sha, _ = write_model(files["model.onnx"], model, big)   # streamed, hashed as written
        del model, big, iw
        if weights:
            copied.result()
            weights_sha = weights_sha.result()
        else:
            from safetensors.numpy import save_file
            save_file({k: np.require(v, requirements="C") for k, v in w.items()}, files["weights.safetensors"],
                      metadata={"spec": spec.name, "spec_sha256": spec.sha256, "untrained": "true"})
            weights_sha = sha256_file(files["weights.safetensors"])
        with open(files["spec.yaml"], "wb") as f:   # the folder's own copy: the torch back end rebuilds from it
            f.write(spec.source.encode())
        shas = {"model.onnx": model_sha, **({"model.onnx.data": data_sha} if external else {}),
                "weights.safetensors": weights_sha, "spec.yaml": spec.sha256}
        manifest = Manifest(
            name=spec.name, resgraph_version=__version__, spec_sha256=spec.sha256, spec_source=spec_path,
            trained=trained, weights_source=weights or f"fresh init, seed {seed}", precision=precision, opset=opset,
            folded=fold, external_data="model.onnx.data" if external else None,
            input=TensorInfo(graph.input_name, ("batch", *graph.nodes[0].shape)),
            output=TensorInfo(graph.output_name, ("batch", *graph[graph.output].shape)),
            preprocess=pre,
            labels=tuple(spec.labels) if spec.labels is not None else None,
            params=checked.params, macs=checked.macs, projections=tuple(p.to_json() for p in graph.projections),
            artifacts={name: Artifact(shas[name], os.path.getsize(files[name])) for name in shas})
        if engine is not None:
            step("building the TensorRT engine")
            from .backends.tensorrt.build import add_engine
            manifest, _ = add_engine(stage, manifest, engine, engine_device, verbose)
        write_manifest(files["manifest.json"], manifest)
        if gate is not None:
            step("checking the engine's parity")
            gate(stage.path)
        final = stage.publish()
    except OSError as e:   # a full disk, a name too long...: the previous artifacts stay as they were
        raise _write_error(e, out) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # a running copy ends before its folder goes
        stage.close()
    t["write"] = time.perf_counter()
    keys = list(t)
    seconds = {k: t[k] - t[p] for p, k in zip(keys, keys[1:], strict=False)}
    seconds["total"] = t["write"] - t["start"]
    return Compiled(out, final, manifest, seconds)
