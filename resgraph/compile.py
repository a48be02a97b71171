"""`resgraph compile`: a spec (+ weights) -> compiled/<name>/{model.onnx, weights.safetensors, spec.yaml,
manifest.json} (+ model.onnx.data with --external-data, and for any model of 2 GiB or more).

With --precision int8 (quant/pipeline.py): calibrate on the given inputs, then model.onnx holds the
uint8-activation Q/DQ model (ONNX Runtime) and model.s8.onnx the int8 zero-point-0 one (TensorRT;
an engine is built from it), published only if the accuracy gate passes. With --engine: the engine
is built from the fp16 model.onnx for fp16, the fp32 one for fp32, tf32 and bf16.

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
which then takes the output folder's place whole (publish.Stage: a rename, or an exchange of the
two folders), or, where it cannot (a mount point, `-o .`), file by file with the manifest last. A crash, Ctrl-C or kill -9
while writing leaves the previous artifacts as they were and no partial file in the output
folder; a stale staging folder is removed by the next compile. (Files are not fsync'ed: this
protects against the process dying, not against the machine losing power mid-write; fsync of
two 100 MB files costs more than the whole compile.)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from .errors import OptionError, PathError, WeightsError
from .manifest import Artifact, Manifest, SizeRange, TensorInfo, onnx_metadata, sha256_file, write_manifest
from .publish import Stage, wait_for_cleanup

__all__ = ["Compiled", "compile_spec", "load_weights", "wait_for_cleanup"]


@dataclass
class Compiled:
    out: str
    files: dict[str, str]        # artifact -> path
    manifest: Manifest
    seconds: dict[str, float]


@dataclass(frozen=True)
class Plan:
    """What `prepare` settled before any work: the checked spec and every option, checked."""
    spec_path: str
    checked: object              # frontend.Checked
    out: str
    precision: str
    opset: int
    fold: bool
    seed: int
    quant: object = None         # quant.pipeline.QuantOptions: precision int8
    contract: object = None      # backends.onnx.contract.Contract: what the model takes and gives


@dataclass
class Weights:
    """The checkpoint `weights` step loaded (or initialised): its tensors, whether it is trained,
    where it came from, and its copy into the stage and sha256, running in the background."""
    tensors: dict
    trained: bool
    source: str
    path: str | None             # the checkpoint file, None for a fresh init
    sha256: Future | str
    copied: Future | None = None


def compile_spec(spec_path: str, weights: str | None = None, out: str | None = None, precision: str = "fp32",
                 opset: int | None = None, fold: bool = True, seed: int = 0, external_data: bool = False,
                 progress=None, engine=None, engine_device: int = 0, gate=None, verbose: bool = False,
                 quant=None, contract=None) -> Compiled:
    """`engine`: BuildOptions of a TensorRT engine; `gate(staged folder)` may refuse the set before it is
    published; `quant` (QuantOptions): int8; `contract` (onnx.contract.Contract): --input, --output."""
    step, clock = progress or (lambda name, *counts: None), Clock()
    step("checking the spec")
    plan = prepare(spec_path, out, precision, opset, fold, seed, engine, quant, external_data, contract)
    clock("check")
    stage = open_stage(plan.out)
    pool = ThreadPoolExecutor(2, thread_name_prefix="resgraph-compile")   # copying and hashing the checkpoint
    try:
        step("loading weights" if weights else "initialising weights")
        w = load(plan, weights, stage, pool)
        clock("weights")
        step("inference passes")
        igraph, iw = inference(plan, w)
        clock("passes")
        manifest = describe(plan, w)
        manifest, model, big, s8 = models(plan, igraph, iw, manifest, weights or spec_path, step)
        del iw
        clock("onnx")
        step("writing artifacts")
        manifest = write(stage, plan, w, model, big, manifest, external_data, s8)
        del model, big, s8
        if engine is not None:
            step("building the TensorRT engine")
            manifest = build_engine(stage, manifest, engine, engine_device, verbose)
        final = publish(stage, manifest, gate, step)
    except OSError as e:   # a full disk, a name too long...: the previous artifacts stay as they were
        raise _write_error(e, plan.out) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # a running copy ends before its folder goes
        stage.close()
    clock("write")
    return Compiled(plan.out, final, manifest, clock.seconds())


def load_weights(path: str, graph):
    """A safetensors checkpoint mapped into memory (zero-copy, see mapped.py), checked against the
    graph's tensor list (fit.check_fit, as the PyTorch back end's loader checks it)."""
    from safetensors import SafetensorError

    from .fileio import check_regular
    from .fit import check_fit, numpy_entries, spec_entries
    from .mapped import open_mapped
    from .ops.count import state_dict_shapes
    check_regular(path, "weights", "check the path (resgraph init / train / import-weights make one)")
    try:
        mapped = open_mapped(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError.at(path, f"not a readable safetensors file: {e}", "weights are .safetensors files") from None
    check_fit(numpy_entries(mapped.tensors), spec_entries(state_dict_shapes(graph)), path)
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


def _variance_minima(w: dict) -> dict[str, float]:
    import numpy as np
    return {k: float(np.min(v)) for k, v in w.items() if k.endswith("running_var") and v.size}


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




class Clock:
    """The time each step took: clock("name") ends the step called name."""

    def __init__(self):
        self.t = {"start": time.perf_counter()}

    def __call__(self, name: str) -> None:
        self.t[name] = time.perf_counter()

    def seconds(self) -> dict[str, float]:
        keys = list(self.t)
        out = {k: self.t[k] - self.t[p] for p, k in zip(keys, keys[1:], strict=False)}
        out["total"] = self.t[keys[-1]] - self.t["start"]
        return out


def prepare(spec_path: str, out: str | None, precision: str, opset: int | None, fold: bool, seed: int,
            engine, quant=None, external_data: bool = False, contract=None) -> Plan:
    """Check the spec and every option before any work: the opset, the precision, the engine's
    precision on the TensorRT there is, the output path (a folder, its parent creatable)."""
    from .backends.onnx import DEFAULT_OPSET, OPSETS
    from .frontend import check_compiled, check_file
    checked = check_compiled(spec_path) if os.path.isdir(spec_path) else check_file(spec_path)   # quantize: a folder
    from .sized import writable
    writable(checked)
    opset = DEFAULT_OPSET if opset is None else opset
    if opset not in OPSETS:
        raise OptionError.at("--opset", f"opset {opset} is not supported",
                             f"choose {OPSETS.start} to {OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    if precision not in ("fp32", "fp16", "int8"):
        raise OptionError.at("--precision", f"unknown precision '{precision}'",
                             "fp32, fp16 or int8 (tf32 and bf16: with --engine)")
    _check_int8(precision, quant, external_data, checked)
    from .backends.onnx.contract import Contract, check
    contract = (contract or Contract(None, None)).over(checked.spec.contract)
    check(contract, io_infos(checked)[0], checked.spec.preprocess, checked.spec.name)
    if engine is not None:   # a profile the model takes (--shapes), TensorRT present, the precision buildable on it
        from .backends.tensorrt.build import import_tensorrt
        from .backends.tensorrt.options import typing_plan, version_tuple
        from .backends.tensorrt.profile import resolve
        resolve(engine, io_infos(checked)[0], size_ranges(checked))
        typing_plan(engine.precision, precision, version_tuple(import_tensorrt().__version__), "--precision")
    out = out or os.path.join("compiled", checked.spec.name)
    target = os.path.realpath(out) if os.path.islink(out) else out   # Stage works on the real folder
    parent = os.path.dirname(os.path.abspath(target))
    if os.path.exists(out) and not os.path.isdir(out):
        raise PathError.at(out, "the output path is a file", "give a folder: -o compiled/NAME")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise PathError.at(parent, f"cannot create the output folder: {e.strerror}",
                           "choose a writable place with -o") from None
    return Plan(spec_path, checked, out, precision, opset, fold, seed, quant, contract)


def _check_int8(precision: str, quant, external_data: bool, checked) -> None:
    """int8 needs calibration inputs, and they mean int8; an int8 model is a quarter of the fp32 one's
    size and always fits one .onnx file; it takes one input."""
    if precision == "int8" and quant is None:
        raise OptionError.at("--precision", "int8 needs calibration inputs",
                             "add --calibrate INPUT... (images, folders or .npy files the model takes, or digits)")
    if quant is not None and precision != "int8":
        raise OptionError.at("--calibrate", f"calibration inputs with --precision {precision}",
                             "add --precision int8 (calibration is for int8 only)")
    if quant is not None and external_data:
        raise OptionError.at("--external-data", "an int8 model is written whole into model.onnx",
                             "leave out --external-data")
    if quant is not None and len(checked.graph.inputs) > 1:
        raise OptionError.at("--precision", f"int8 takes models with one input; {checked.spec.name} has "
                             f"{len(checked.graph.inputs)}", "compile it with --precision fp32 or fp16")


def quantize(plan: Plan, igraph, iw: dict, manifest: Manifest, step) -> tuple[Manifest, object, object]:
    """(the manifest with its Quantization record, model.onnx's u8 model, model.s8.onnx's s8 model):
    quant/pipeline.py, with a progress bar through `step`."""
    from .quant.pipeline import quantize_graph
    step("calibrating")
    dims = onnx_dims(manifest)
    u8, s8, q = quantize_graph(igraph, iw, manifest, plan.quant, plan.opset, onnx_metadata(manifest), dims,
                               lambda what, done, total: step(f"{what} {bar(done, total)} {done:,}/{total:,}"))
    return replace(manifest, quantization=q), u8, s8


def models(plan: Plan, igraph, iw: dict, manifest: Manifest, where: str, step) -> tuple:
    """(manifest, model.onnx's model, its streamed initializers, model.s8.onnx's model or None): lowered,
    or calibrated and quantised (two int8 encodings, gated), then put behind the contract."""
    if plan.quant is None:
        (model, big), s8 = lower_onnx(plan, igraph, iw, manifest, where, step), None
    else:
        manifest, model, s8, big = *quantize(plan, igraph, iw, manifest, step), {}
    return under_contract(plan, manifest, model, big, s8), model, big, s8


def under_contract(plan: Plan, manifest: Manifest, model, big: dict, s8=None) -> Manifest:
    """The models (model.onnx, and model.s8.onnx for int8) put behind --input/--output in place, checked;
    the manifest's inputs and outputs say what they now take and give."""
    if plan.contract.default:
        return manifest
    import onnx

    from .backends.onnx.check import skeleton
    from .backends.onnx.contract import apply, infos
    ins, outs = infos(plan.contract, manifest.inputs, manifest.outputs)
    for m in (model, s8):
        if m is not None:
            apply(m, plan.contract, ins, outs, manifest.preprocess)
            onnx.checker.check_model(skeleton(m, big if m is model else None), full_check=True)
    return replace(manifest, input=ins[0], output=outs[0], inputs=ins, outputs=outs)


def bar(done: int, total: int, width: int = 24) -> str:
    """A text progress bar: ━━━━━━────── (the status line's spinner shows it turning)."""
    k = round(width * done / total) if total else width
    return "━" * k + "─" * (width - k)


def open_stage(out: str) -> Stage:
    try:
        return Stage(out)
    except OSError as e:   # read-only, no permission, /proc/...: nothing was written
        raise _write_error(e, out) from None


def load(plan: Plan, path: str | None, stage: Stage, pool: ThreadPoolExecutor) -> Weights:
    """The checkpoint at `path`, mapped and checked (fit and values: fit.py), its copy into the stage
    and its sha256 started in the background; or, without one, a fresh seeded init, flagged untrained."""
    import numpy as np

    from .fit import check_values
    graph = plan.checked.graph
    if path is None:
        w = {k: np.asarray(v) for k, v in fresh_weights(graph, plan.seed).items()}
        return Weights(w, False, f"fresh init, seed {plan.seed}", None, "")
    mapped = load_weights(path, graph)
    nonfinite = pool.submit(_nonfinite, mapped.tensors)
    w = Weights(mapped.tensors, mapped.metadata.get("untrained") != "true", path, path,   # resgraph init marks its own
                pool.submit(lambda: hashlib.sha256(mapped.buffer).hexdigest()),
                pool.submit(shutil.copyfile, path, stage.file("weights.safetensors")))   # in the kernel
    # before folding, which would turn these into NaN weights (and fp16 call them overflow)
    check_values(nonfinite.result(), _variance_minima(w.tensors), path)
    return w


def inference(plan: Plan, w: Weights):
    """The inference passes (drop no-ops, spell out projections, fold bn unless --no-fold), verified;
    a fold that overflows is refused, naming the tensors."""
    from .passes.inference import for_inference
    from .passes.verify import verify
    igraph, iw = for_inference(plan.checked.graph, w.tensors, fold=plan.fold)
    verify(igraph)
    folded_bad = _nonfinite(iw) if plan.fold else []
    if folded_bad:
        raise WeightsError.at(w.path or plan.spec_path, f"folding batch norm gives NaN or inf in {len(folded_bad)} "
                              "tensor(s): " + ", ".join(folded_bad[:5]) + (" ..." if len(folded_bad) > 5 else ""),
                              "gamma / sqrt(running_var + eps) overflows for these layers: check the checkpoint's "
                              "batch norm statistics, or compile with --no-fold")
    return igraph, iw


def inference_graph(folder: str, manifest: Manifest):
    """(inference graph, its weights, the size-variable dims) of a compiled folder's spec and checkpoint,
    folded as the folder was: what quantize --explain measures."""
    from .frontend import check_compiled
    from .passes.inference import for_inference
    checked = check_compiled(folder)
    mapped = load_weights(os.path.join(folder, "weights.safetensors"), checked.graph)
    igraph, iw = for_inference(checked.graph, mapped.tensors, fold=manifest.folded)
    dims = onnx_dims(manifest)
    return igraph, iw, dims


def describe(plan: Plan, w: Weights) -> Manifest:
    """The folder's manifest, before its artifacts are written (their sha256s and sizes come after)."""
    from .version import __version__
    from .runtime.preprocess import Preprocess
    spec, graph, c = plan.checked.spec, plan.checked.graph, plan.checked
    ins, outs = io_infos(c)
    sizes = size_ranges(c)
    return Manifest(
        name=spec.name, resgraph_version=__version__, spec_sha256=spec.sha256, spec_source=plan.spec_path,
        trained=w.trained, weights_source=w.source, precision=plan.precision, opset=plan.opset, folded=plan.fold,
        input=ins[0], output=outs[0], inputs=ins, outputs=outs, sizes=sizes,
        preprocess=Preprocess.resolve(spec.preprocess, graph.nodes[0].shape).to_json(),
        labels=tuple(spec.labels) if spec.labels is not None else None,
        params=c.params, macs=c.sizes.macs if c.sizes is not None else c.macs,
        projections=tuple(p.to_json() for p in graph.projections))


def onnx_dims(manifest: Manifest) -> dict | None:
    """What the ONNX lowering declares for a model with size variables: every input's and output's dims
    without the batch, symbolic ones as their names or expressions (lower.build's `dims`); None for a
    model of fixed sizes."""
    return {t.name: list(t.sample_shape) for t in manifest.inputs + manifest.outputs} if manifest.dynamic else None


def size_ranges(c) -> dict:
    """The size variables of a checked spec as the manifest records them: {var: SizeRange}."""
    return {} if c.sizes is None else {k: SizeRange(c.spec.sizes[k].lo, c.spec.sizes[k].hi, tuple(v))
                                       for k, v in c.sizes.valid.items()}


def io_infos(checked) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Every input and output of a checked spec as the manifest and model.onnx name them: with the
    batch first, and size variables (and outputs' expressions of them) as strings."""
    ins, outs = checked.io_shapes()
    g = checked.graph
    return (tuple(TensorInfo(name, ("batch", *s)) for (name, _), s in zip(g.inputs, ins)),
            tuple(TensorInfo(name, ("batch", *s)) for (name, _), s in zip(g.outputs, outs)))


def lower_onnx(plan: Plan, igraph, iw: dict, manifest: Manifest, where: str, step=lambda name: None):
    """The ONNX model (the large initializers apart, to be streamed), its metadata from the manifest;
    fp16 overflow refused (an error at `where`, the checkpoint or the spec); validated."""
    step("lowering to ONNX")
    from .backends.onnx import validate
    from .backends.onnx.lower import build
    dims = onnx_dims(manifest)
    model, big = build(igraph, iw, opset=plan.opset, precision=plan.precision, metadata=onnx_metadata(manifest),
                       dims=dims)
    if plan.precision == "fp16":
        _check_fp16(model, big, iw, where)
    validate(model, igraph, streamed=big)
    return model, big


def write(stage: Stage, plan: Plan, w: Weights, model, big: dict, manifest: Manifest, external_data: bool,
          s8=None) -> Manifest:
    """model.onnx (+ .data; + model.s8.onnx for int8), weights.safetensors and spec.yaml into the
    stage; the manifest completed with their sha256s and sizes (written by publish)."""
    import numpy as np

    from .backends.onnx.writer import save, write_model
    shas = save(stage.file, model, big, external_data)
    if s8 is not None:
        shas["model.s8.onnx"] = write_model(stage.file("model.s8.onnx"), s8, {})[0]
    if w.copied is not None:
        w.copied.result()
        shas["weights.safetensors"] = w.sha256.result()
    else:
        from safetensors.numpy import save_file
        spec = plan.checked.spec
        save_file({k: np.require(v, requirements="C") for k, v in w.tensors.items()}, stage.file("weights.safetensors"),
                  metadata={"spec": spec.name, "spec_sha256": spec.sha256, "untrained": "true"})
        shas["weights.safetensors"] = sha256_file(stage.file("weights.safetensors"))
    with open(stage.file("spec.yaml"), "wb") as f:   # the folder's own copy: the torch back end rebuilds from it
        f.write(plan.checked.spec.source.encode())
    shas["spec.yaml"] = plan.checked.spec.sha256
    return replace(manifest, external_data="model.onnx.data" if "model.onnx.data" in shas else None,
                   artifacts={n: Artifact(shas[n], os.path.getsize(stage.file(n))) for n in shas})


def build_engine(stage: Stage, manifest: Manifest, options, device_id: int, verbose: bool) -> Manifest:
    """model.engine + engine.json built from the staged model.onnx, into the stage; the manifest lists them."""
    from .backends.tensorrt.build import add_engine
    return add_engine(stage, manifest, options, device_id, verbose)[0]


def publish(stage: Stage, manifest: Manifest, gate, step) -> dict[str, str]:
    """The manifest into the stage, then the gate (which may refuse the set), then the set in place."""
    write_manifest(stage.file("manifest.json"), manifest)
    if gate is not None:
        step("checking the engine's parity")
        gate(stage.path)
    return stage.publish()
