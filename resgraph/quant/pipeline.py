"""From an inference graph to a published int8 pair: calibrate, place Q/DQ twice, gate.

    options checked (keep_float against the graph) -> calibration set (quant/data.py) ->
    calibrate (quant/calibrate.py, streamed) -> model.onnx (u8) and model.s8.onnx (s8) (quant/qdq.py)
    -> the gate (quant/gate.py; a failure names the five most sensitive layers, quant/explain.py)
    -> the manifest's Quantization record.

`compile --precision int8` calls `quantize_graph` between the inference passes and writing; the
stage is published only if it returns (a gate failure raises, and nothing is written).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import OptionError
from ..ir import Graph
from ..manifest import Quantization
from .gate import Thresholds


ENCODED = {"model.onnx": "u8", "model.s8.onnx": "s8"}   # the folder's int8 files and their activations' encoding


@dataclass(frozen=True)
class QuantOptions:
    calibrate: tuple[str, ...]
    samples: int | None = None              # None: every input found, at most data.DEFAULT_SAMPLES
    method: str = "percentile"
    percentile: float = 99.999
    keep_float: tuple[str, ...] = ()
    eval: str | None = None                 # a labelled set (DIR or digits) for the gate
    thresholds: Thresholds = field(default_factory=Thresholds)
    gate: bool = True
    seed: int = 0
    stdin: object = None                    # for '-' among the calibration inputs

    def __post_init__(self):
        from .calibrate import METHODS
        if self.method not in METHODS:
            raise OptionError.at("--calibration-method", f"unknown method '{self.method}'", " | ".join(METHODS))
        if not 0 < self.percentile <= 100:
            raise OptionError.at("--percentile", f"{self.percentile} is not in (0, 100]", "e.g. 99.999 (the default)")


def check_keep_float(graph: Graph, keep_float: tuple[str, ...], where: str = "--keep-float") -> tuple[str, ...]:
    """Every --keep-float entry names a node or a block of the graph (an id or a path: `stem`, `fc`,
    `layer1.0`); the IR paths it keeps float, in graph order."""
    from ..errors import did_you_mean
    from .qdq import is_float
    paths = [n.path for n in graph.nodes]
    for k in keep_float:
        if not any(is_float(p, (k,)) for p in paths):
            prefixes = sorted({p.rsplit(".", i)[0] for p in paths for i in range(p.count(".") + 1)})
            raise OptionError.at(where, f"'{k}' is no layer or block of the network",
                                 did_you_mean(k, prefixes, "layers and blocks"))
    return tuple(p for p in paths if is_float(p, keep_float))


def _progress_batches(batches, progress, total: int, what: str):
    done = 0
    for b in batches:
        yield b
        done += len(b)
        if progress:
            progress(what, done, total)


def quantize_graph(graph: Graph, weights: dict, manifest, options: QuantOptions, opset: int,
                   metadata: dict | None = None, dims: dict | None = None, progress=None):
    """(model.onnx's u8 model, model.s8.onnx's s8 model, the Quantization record).

    Pre: graph/weights are for_inference's (bn folded when the folder folds); manifest describes the
    folder (its preprocess reads the inputs). QuantizationError when the gate fails."""
    from ..runtime import cpu
    from .qdq import quantize
    floats = check_keep_float(graph, options.keep_float)
    c, cal, feeder = _calibrate(graph, weights, manifest, options, progress, dims)
    models = {f: quantize(graph, weights, c.amax, e, options.keep_float, opset, metadata, dims, c.ranges)
              for f, e in ENCODED.items()}
    record = {"on": "not gated (--no-gate)", "passed": None}
    if options.gate:
        build = (lambda keep: quantize(graph, weights, c.amax, "u8", options.keep_float + keep, opset, dims=dims,
                                       ranges=c.ranges))
        record = _gate(graph, weights, build, models, options, manifest, feeder, cal, opset, dims, progress)
    q = Quantization(options.method, options.percentile if options.method == "percentile" else None, c.samples,
                     options.seed, cal.description, cal.sha256, sum(o.state_bytes() for o in c.observers.values()),
                     options.keep_float, floats, dict(ENCODED), record, cpu.describe())
    return models["model.onnx"], models["model.s8.onnx"], q


def _calibrate(graph: Graph, weights: dict, manifest, options: QuantOptions, progress, dims=None):
    """(calibrate.Calibration, the calibration Samples, the Feeder that reads them)."""
    from ..runtime.inputs import Feeder
    from ..runtime.preprocess import Preprocess
    from .calibrate import calibrate_full
    from .data import calibration_set
    from .qdq import tensors_to_calibrate
    if len(manifest.inputs) > 1:
        raise OptionError.at("--precision", f"int8 takes models with one input; this one has {len(manifest.inputs)}",
                             "compile it in fp32 or fp16")
    feeder = Feeder(Preprocess.from_json(manifest.preprocess, manifest.input.sample_shape, manifest.sizes),
                    [(t.name, t.sample_shape) for t in manifest.inputs])
    cal = calibration_set(options.calibrate, manifest, options.samples, options.seed, options.stdin)
    c = calibrate_full(graph, weights, _progress_batches(cal.batches(feeder), progress, len(cal), "calibrating"),
                       tensors_to_calibrate(graph, options.keep_float), options.method, options.percentile, dims=dims)
    return c, cal, feeder


@dataclass(frozen=True)
class Sensitivity:
    """quantize --explain's answer: per unit, SQNR alone and cumulative; the whole model's gate figures;
    the smallest --keep-float set found that passes the gate (() when it passes as it is; None: none
    within explain.MAX_SUGGESTED layers)."""
    rows: list            # (explain.Unit, alone dB, cumulative dB)
    gate: dict
    suggestion: tuple[str, ...] | None
    on: str               # the inputs the SQNRs were measured on


def sensitivity(graph: Graph, weights: dict, manifest, options: QuantOptions, opset: int,
                dims: dict | None = None, progress=None) -> Sensitivity:
    """Every unit's sensitivity (quant/explain.py), the gate's figures and a --keep-float suggestion.
    Pre: as quantize_graph's. Writes nothing."""
    import itertools

    from ..backends.onnx.lower import to_onnx
    from . import explain
    from . import gate as g
    from .data import labelled_set
    from .qdq import quantize
    check_keep_float(graph, options.keep_float)
    c, cal, feeder = _calibrate(graph, weights, manifest, options, progress, dims)
    data = labelled_set(options.eval, manifest) if options.eval else cal
    fp32 = to_onnx(graph, weights, opset=opset, dims=dims)

    def build(keep, encoding="u8"):
        return quantize(graph, weights, c.amax, encoding, options.keep_float + tuple(keep), opset, dims=dims,
                        ranges=c.ranges)

    def gate(keep) -> dict:
        models = {f: build(keep, e) for f, e in ENCODED.items()}
        return g.record(g.measure(fp32, models, data.batches(feeder), data.labels), options.thresholds,
                        data.description, len(data), data.labels is not None)
    few = list(itertools.islice(data.batches(feeder), max(1, explain.SENSITIVITY_SAMPLES // 8)))
    ref = g.outputs(fp32, few)
    us = explain.units(graph, options.keep_float)
    tick = (lambda what: (lambda i, n: progress(what, i, n))) if progress else (lambda what: None)
    alone = explain.alone(us, build, few, ref, tick("layers alone"))
    cum = explain.cumulative(us, build, few, ref, tick("layers in order"))
    whole = gate(())
    suggestion = () if whole["passed"] else explain.suggest(lambda keep: gate(keep)["passed"], alone)
    return Sensitivity([(u, a, s) for (u, a), (_, s) in zip(alone, cum, strict=True)], whole, suggestion,
                       f"the first {sum(len(b) for b in few)} of {data.description}")


def _gate(graph, weights, build, models, options, manifest, feeder, cal, opset, dims, progress) -> dict:
    """The gate's record; QuantizationError naming the most sensitive layers when it fails."""
    import itertools

    from ..backends.onnx.lower import to_onnx
    from . import explain
    from . import gate as g
    from .data import labelled_set
    data = labelled_set(options.eval, manifest) if options.eval else cal
    fp32 = to_onnx(graph, weights, opset=opset, dims=dims)
    measured = g.measure(fp32, models, _progress_batches(data.batches(feeder), progress, len(data), "gating"),
                         data.labels)
    record = g.record(measured, options.thresholds, data.description, len(data), data.labels is not None)
    if record["passed"]:
        return record
    few = list(itertools.islice(data.batches(feeder), max(1, explain.SENSITIVITY_SAMPLES // 8)))
    ref = g.outputs(fp32, few)
    sens = explain.alone(explain.units(graph, options.keep_float), build, few, ref,
                         (lambda i, n: progress("finding the sensitive layers", i, n)) if progress else None)
    raise g.failure(record, explain.worst(sens), options.eval or "--calibrate " + " ".join(options.calibrate),
                    options.method)


@dataclass(frozen=True)
class Source:
    """A compiled fp32 folder to quantise: the folder (compile_spec takes it as its spec: its spec.yaml,
    with the manifest's labels), its manifest, its weights.safetensors."""
    folder: str
    manifest: object
    weights: str


def source_folder(folder: str, out: str | None, options: QuantOptions | None) -> Source:
    """`resgraph quantize`'s source, checked: an fp32 folder (fp16 and int8 weights are not what
    calibration starts from), calibration inputs given, the output another folder."""
    import os

    from ..errors import ArtifactError
    from ..manifest import read_manifest
    m = read_manifest(folder)
    if m.precision != "fp32":
        raise ArtifactError.at(folder, f"an {m.precision} folder: quantize starts from an fp32 one",
                               "compile the spec in fp32 (resgraph compile SPEC --weights W -o FOLDER), then quantize "
                               "that; or compile it straight to int8: resgraph compile SPEC --weights W --precision int8 "
                               "--calibrate INPUT")
    if options is None:
        raise OptionError.at("--calibrate", "no calibration inputs", "add --calibrate INPUT (images, folders, .npy "
                             "files the model takes, or digits)")
    if out is not None and os.path.realpath(out) == os.path.realpath(folder):
        raise OptionError.at("-o", "the output is the source folder", "give a new folder: -o compiled/NAME-int8")
    return Source(folder, m, os.path.join(folder, "weights.safetensors"))
