"""The compiled folder's typed manifest, and reading a folder back: what it holds, checked.

    compiled/<name>/
        manifest.json          Manifest.to_json(): what the folder holds and how to feed the model
        spec.yaml              the spec, byte for byte (its sha256 is the manifest's spec_sha256)
        model.onnx             (+ model.onnx.data with external data)
        weights.safetensors    the checkpoint (unfolded): the torch back end and parity read it

One home for the manifest, shared by `compile` (writes it), the runtime (reads only this folder,
never the user's spec or the IR) and the engine builder. Standard library only: a deployment
that runs model.onnx imports neither torch nor the front end.

Publishing a folder (atomically, whole) is publish.py's.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from .errors import ArtifactError, PathError

FORMAT = 4   # manifest.json's format; bump on any change a reader must know about (4: input dtypes and layouts)
# 2: "inputs", "outputs" (every one, "input"/"output" their first) and "sizes" (size variables)
# 3: "quantization" (precision int8: how it was calibrated, which model file each back end reads, the
#    accuracy gate's figures, the CPU the gate ran on); model.s8.onnx
# every file a compiled folder may hold, in publishing order: the manifest, which describes the
# others, goes last
ARTIFACTS = ("weights.safetensors", "spec.yaml", "model.onnx.data", "model.onnx", "model.s8.onnx", "model.engine",
             "engine.json", "manifest.json")
# an int8 folder holds two encodings of one calibration: model.onnx (uint8 activations, ONNX Runtime's
# CPU integer kernels) and model.s8.onnx (int8, zero point 0: what TensorRT requires). Back ends of
# the TensorRT family read the second.
S8_BACKENDS = ("tensorrt", "ort-trt")


DTYPES = ("float32", "float16", "uint8")   # what an input or output of a compiled model may be
KSERVE = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}   # their names in Triton's protocol
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple          # ("batch", C, H, W) ("batch", H, W, C) in nhwc, or ("batch", F); H, W may be symbolic:
    #                       a size variable's name for an input ("H"), an expression of it for an output
    dtype: str = "float32"   # or float16, or uint8: raw pixels, normalised by the model (compile --input)
    layout: str = "nchw"     # nhwc: an image input channels-last, as a decoder gives it

    @property
    def chw(self) -> tuple:
        """The sample shape channels first, whatever the layout: what a preprocess makes."""
        s = self.sample_shape
        return (s[2], s[0], s[1]) if self.layout == "nhwc" else s

    @property
    def sample_shape(self) -> tuple:
        """The shape of one sample: without the batch dimension."""
        return tuple(self.shape[1:])

    @property
    def dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape[1:])

    def at(self, sizes: dict) -> tuple[int, ...]:
        """The sample shape with the size variables at `sizes` (name -> length). An output's derived
        dims are expressions of them (sized.expression's forms)."""
        return tuple(d if isinstance(d, int) else evaluate_dim(d, sizes) for d in self.sample_shape)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                **({"layout": self.layout} if self.layout != "nchw" else {})}

    @classmethod
    def from_json(cls, d: dict) -> "TensorInfo":
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]), str(d.get("layout", "nchw")))


def scale_shift(c: int, preprocess: dict) -> tuple:
    """[C] float32 scale and shift, x * scale + shift = (x / 255 - mean) / std: a uint8 model's first nodes."""
    import numpy as np
    mean = np.asarray(preprocess.get("mean") or [0.0] * c, np.float64)
    std = np.asarray(preprocess.get("std") or [1.0] * c, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


@dataclass(frozen=True)
class SizeRange:
    """A size variable of the compiled model: its range and every valid size in it (check's sweep)."""
    lo: int
    hi: int
    valid: tuple[int, ...]

    def nearest(self, n: int, k: int = 2) -> list[int]:
        """The k valid sizes nearest to n (the smaller first on a tie)."""
        return nearest(self.valid, n, k)


def nearest(valid, n: int, k: int = 2) -> list[int]:
    """The k sizes of `valid` (ascending) nearest to n (the smaller first on a tie), in increasing order."""
    import bisect
    i = bisect.bisect_left(valid, n)
    return sorted(sorted(valid[max(0, i - k):i + k], key=lambda v: (abs(v - n), v))[:k])


def compact(valid_sizes) -> str:
    """A list of sizes in words: 'every size from 32 to 2048', 'multiples of 32 from 64 to 2048', or
    the list itself (at most 12 shown)."""
    v = [int(x) for x in valid_sizes]
    if not v:
        return "no size"
    if len(v) == 1:
        return f"{v[0]} only"
    steps = {b - a for a, b in zip(v, v[1:])}
    if len(steps) == 1:
        step = steps.pop()
        if step == 1:
            return f"every size from {v[0]} to {v[-1]}"
        kind = f"multiples of {step}" if v[0] % step == 0 else f"every {step}th size"
        return f"{kind} from {v[0]} to {v[-1]}"
    shown = ", ".join(map(str, v[:12]))
    return f"{shown}{f', ... ({len(v):,} sizes)' if len(v) > 12 else ''}"


def evaluate_dim(expr: str, sizes: dict) -> int:
    """An output dim written by sized.expression: H, H * s, H + c, ceil(H / s), floor((H + c) / s)."""
    import re
    e = expr.replace(" ", "")
    m = re.fullmatch(r"(\d+)\*(.+)", e)
    if m:
        return int(m[1]) * evaluate_dim(m[2], sizes)
    m = re.fullmatch(r"([A-Za-z_]\w*)", e)
    if m:
        return int(sizes[m[1]])
    m = re.fullmatch(r"([A-Za-z_]\w*)\*(\d+)", e)
    if m:
        return int(sizes[m[1]]) * int(m[2])
    m = re.fullmatch(r"([A-Za-z_]\w*)([+-]\d+)", e)
    if m:
        return int(sizes[m[1]]) + int(m[2])
    m = re.fullmatch(r"ceil\(([A-Za-z_]\w*)/(\d+)\)", e)
    if m:
        return -(-int(sizes[m[1]]) // int(m[2]))
    m = re.fullmatch(r"floor\(\(([A-Za-z_]\w*)([+-]\d+)\)/(\d+)\)", e)
    if m:
        return (int(sizes[m[1]]) + int(m[2])) // int(m[3])
    raise ValueError(f"an output dim {expr!r} that is not one of the forms check writes")


@dataclass(frozen=True)
class Quantization:
    """How an int8 folder was quantised (manifest.json's "quantization").

    method, percentile: the calibration (quant.calibrate); samples: how many inputs it read, drawn
    from `calibration` (a description: 'digits (train split)', '512 of 1,300 files under data/cal,
    seed 0'); calibration_sha256: of the ordered list of inputs read (same list, same model);
    state_bytes: the observers' memory. keep_float: the spec paths or ids asked to stay float;
    float_nodes: the IR paths that did. models: file -> its activation encoding ("u8" | "s8").
    gate: the accuracy gate's figures (quant.gate.GateResult.to_json). cpu: the CPU the gate ran on
    (runtime.cpu.describe())."""
    method: str
    percentile: float | None
    samples: int
    seed: int
    calibration: str
    calibration_sha256: str
    state_bytes: int
    keep_float: tuple[str, ...]
    float_nodes: tuple[str, ...]
    models: dict
    gate: dict
    cpu: dict

    def to_json(self) -> dict:
        d = asdict(self)
        d["keep_float"], d["float_nodes"] = list(self.keep_float), list(self.float_nodes)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Quantization":
        return cls(method=str(d["method"]), percentile=None if d["percentile"] is None else float(d["percentile"]),
                   samples=int(d["samples"]), seed=int(d["seed"]), calibration=str(d["calibration"]),
                   calibration_sha256=str(d["calibration_sha256"]), state_bytes=int(d["state_bytes"]),
                   keep_float=tuple(str(x) for x in d["keep_float"]),
                   float_nodes=tuple(str(x) for x in d["float_nodes"]),
                   models={str(k): str(v) for k, v in d["models"].items()}, gate=dict(d["gate"]), cpu=dict(d["cpu"]))


@dataclass(frozen=True)
class Artifact:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. `preprocess` is resolved: every key present, defaults filled in."""
    name: str
    resgraph_version: str
    spec_sha256: str
    spec_source: str               # the path compile read the spec from
    trained: bool
    weights_source: str
    precision: str                 # fp32 | fp16 | int8 (of model.onnx; its input and output are fp32)
    opset: int
    folded: bool
    input: TensorInfo              # inputs[0], outputs[0]
    output: TensorInfo
    preprocess: dict
    labels: tuple[str, ...] | None
    params: int
    macs: int                      # per sample
    projections: tuple = ()
    external_data: str | None = None
    artifacts: dict = field(default_factory=dict)   # file name -> Artifact
    format: int = FORMAT
    spec: str = "spec.yaml"
    inputs: tuple = ()             # every input and output (TensorInfo), in spec order; () = (input,)
    outputs: tuple = ()
    sizes: dict = field(default_factory=dict)   # size variable -> SizeRange
    quantization: Quantization | None = None    # precision int8 only

    def __post_init__(self):
        if not self.inputs:
            object.__setattr__(self, "inputs", (self.input,))
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.output,))

    @property
    def dynamic(self) -> bool:
        return bool(self.sizes)

    def onnx_file(self, backend: str | None = None) -> str:
        """The ONNX file `backend` reads: model.onnx, except that an int8 folder's TensorRT back ends
        (S8_BACKENDS; None: the TensorRT builder) read the int8 zero-point-0 encoding, model.s8.onnx."""
        if self.quantization is not None and (backend is None or backend in S8_BACKENDS):
            return "model.s8.onnx"
        return "model.onnx"

    def to_json(self) -> dict:
        d = asdict(self)
        d["input"], d["output"] = self.input.to_json(), self.output.to_json()
        d["inputs"], d["outputs"] = [t.to_json() for t in self.inputs], [t.to_json() for t in self.outputs]
        d["sizes"] = {k: {"min": v.lo, "max": v.hi, "valid": list(v.valid)} for k, v in self.sizes.items()}
        d["labels"] = list(self.labels) if self.labels is not None else None
        d["projections"] = list(self.projections)
        d["quantization"] = self.quantization.to_json() if self.quantization is not None else None
        order = ("format", "resgraph_version", "name", "spec", "spec_source", "spec_sha256", "trained",
                 "weights_source", "precision", "opset", "folded", "external_data", "input", "output",
                 "inputs", "outputs", "sizes", "preprocess", "labels", "params", "macs", "projections",
                 "quantization", "artifacts")
        assert set(order) == set(d), set(order) ^ set(d)
        return {k: d[k] for k in order}

    @classmethod
    def from_json(cls, d: dict, where: str = "manifest.json") -> "Manifest":
        """Read a manifest; one from another format is refused with what to do about it."""
        from .version import __version__
        if not isinstance(d, dict):
            raise ArtifactError.at(where, "not a resgraph manifest (not a JSON object)", "recompile: resgraph compile SPEC")
        fmt = d.get("format")
        made_by = d.get("resgraph_version", "an unknown version")
        if fmt is None:
            raise ArtifactError.at(where, f"compiled by resgraph {made_by}, before manifests had a format "
                                   f"(this resgraph {__version__} reads format {FORMAT})",
                                   "recompile the spec with this resgraph: resgraph compile SPEC --weights W -o FOLDER")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT:
            raise ArtifactError.at(where, f"manifest format {fmt!r} from resgraph {made_by} is newer than this "
                                   f"resgraph {__version__} reads (format {FORMAT})",
                                   "upgrade resgraph (pip install -U resgraph), or recompile with this version")
        if fmt < 1:
            raise ArtifactError.at(where, f"manifest format {fmt} is no longer read", "recompile with this resgraph")
        try:   # format 1: one input, one output, fixed sizes (its "input"/"output" are the lists' one)
            m = cls(
                name=str(d["name"]), resgraph_version=str(d["resgraph_version"]), spec_sha256=str(d["spec_sha256"]),
                spec_source=str(d["spec_source"]), trained=bool(d["trained"]), weights_source=str(d["weights_source"]),
                precision=str(d["precision"]), opset=int(d["opset"]), folded=bool(d["folded"]),
                input=TensorInfo.from_json(d["input"]), output=TensorInfo.from_json(d["output"]),
                inputs=tuple(TensorInfo.from_json(t) for t in d["inputs"]) if fmt >= 2 else (),
                outputs=tuple(TensorInfo.from_json(t) for t in d["outputs"]) if fmt >= 2 else (),
                sizes={str(k): SizeRange(int(v["min"]), int(v["max"]), tuple(int(x) for x in v["valid"]))
                       for k, v in d["sizes"].items()} if fmt >= 2 else {},
                preprocess=dict(d["preprocess"]),
                labels=tuple(str(x) for x in d["labels"]) if d["labels"] is not None else None,
                params=int(d["params"]), macs=int(d["macs"]), projections=tuple(d["projections"]),
                external_data=d["external_data"], format=fmt, spec=str(d["spec"]),
                quantization=Quantization.from_json(d["quantization"]) if fmt >= 3 and d["quantization"] is not None
                else None,
                artifacts={str(k): Artifact(str(v["sha256"]), int(v["bytes"])) for k, v in d["artifacts"].items()})
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
            raise ArtifactError.at(where, f"a damaged manifest: {type(e).__name__}: {e}",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER") from None
        problem = m.out_of_bounds()
        if problem:
            raise ArtifactError.at(where, f"a damaged manifest: {problem}",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER")
        return m

    def out_of_bounds(self) -> str | None:
        """What in the manifest no compile writes, checked before anything is allocated from it: its
        limits are the spec language's (shapes, labels), and every file it names is one of a compiled
        folder's (a plain name: nothing outside the folder)."""
        from .limits import MAX_CHANNELS, MAX_ELEMENTS, MAX_IO, MAX_LABELS, MAX_SPATIAL
        if len(self.inputs) > MAX_IO or len(self.outputs) > MAX_IO:
            return f"{len(self.inputs)} inputs and {len(self.outputs)} outputs, more than {MAX_IO} of either"
        if (self.inputs[0], self.outputs[0]) != (self.input, self.output):
            return "its input and output are not the first of its inputs and outputs"
        if len({t.name for t in self.inputs + self.outputs}) != len(self.inputs) + len(self.outputs):
            return "two of its inputs and outputs share a name"
        for name, r in self.sizes.items():
            if not (isinstance(name, str) and 1 <= r.lo <= r.hi <= MAX_SPATIAL and r.valid and
                    all(r.lo <= v <= r.hi for v in r.valid) and list(r.valid) == sorted(set(r.valid))):
                return f"size variable {name!r} has a range or valid sizes no compile writes"
        for t in self.inputs + self.outputs:
            try:   # every size variable at its largest valid size
                dims = t.at({k: r.valid[-1] for k, r in self.sizes.items()})
            except (KeyError, ValueError):
                return f"{t.name}'s shape {list(t.shape)} names a size variable the manifest does not have"
            if not dims or len(dims) > 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims):
                return f"{t.name}'s shape {list(t.shape)} is not [batch, C, H, W] or [batch, F] of positive integers"
            if t.dtype not in DTYPES or t.layout not in LAYOUTS or (t.layout == "nhwc" and len(dims) != 3):
                return f"{t.name} is {t.dtype} {t.layout}, which no compile writes"
            if t.layout == "nhwc":
                dims = (dims[2], dims[0], dims[1])
            if dims[0] > MAX_CHANNELS or any(v > MAX_SPATIAL for v in dims[1:]) or math.prod(dims) > MAX_ELEMENTS:
                return (f"{t.name}'s shape {list(t.shape)} is beyond the spec language's limits ({MAX_CHANNELS:,} "
                        f"channels, {MAX_SPATIAL:,} pixels a side, {MAX_ELEMENTS:,} elements a sample)")
        if (self.precision == "int8") != (self.quantization is not None):
            return f"precision {self.precision!r} {'with' if self.quantization else 'without'} a quantization record"
        if self.quantization is not None and set(self.quantization.models) != {"model.onnx", "model.s8.onnx"}:
            return f"its int8 models are {sorted(self.quantization.models)}, not model.onnx and model.s8.onnx"
        if self.labels is not None and len(self.labels) > MAX_LABELS:
            return f"{len(self.labels):,} labels, more than {MAX_LABELS:,}"
        names = [self.spec, *self.artifacts] + ([self.external_data] if self.external_data is not None else [])
        odd = [n for n in names if n not in ARTIFACTS]
        if odd:
            return f"it names {odd[0]!r}, not a file a compiled folder holds ({', '.join(ARTIFACTS)})"
        return None


def folder_of(artifact: str) -> str:
    """The compiled folder for a path to it or to a file in it (its model.onnx, say)."""
    if os.path.isdir(artifact):
        return artifact
    if os.path.isfile(artifact) and os.path.isfile(os.path.join(os.path.dirname(artifact) or ".", "manifest.json")):
        return os.path.dirname(artifact) or "."
    if not os.path.exists(artifact):
        raise PathError.at(artifact, "no such compiled folder or file",
                           "compile a spec first: resgraph compile SPEC -o FOLDER, then pass FOLDER")
    raise ArtifactError.at(artifact, "not a compiled folder: no manifest.json beside it",
                           "pass the folder resgraph compile wrote (compiled/NAME), or a model.onnx inside it")


def read_folder_file(folder: str, name: str, limit: int, what: str) -> tuple[str, bytes]:
    """(path, bytes) of the file `name` of a compiled folder, read as untrusted input: `name` is a plain
    file name, the file (symlinks resolved) lies inside the folder, it is a regular file (a FIFO would
    block forever, /dev/zero never end) and at most `limit` bytes, all checked before it is read."""
    import stat
    path = os.path.join(folder, name)
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise ArtifactError.at(os.path.join(folder, "manifest.json"), f"the {what} is {name!r}, not a file of the "
                               "folder", "recompile: resgraph compile SPEC -o FOLDER")
    real, inside = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, inside]) != inside:
        raise ArtifactError.at(path, f"the {what} leads outside the compiled folder (to {real})",
                               "recompile: resgraph compile SPEC -o FOLDER")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ArtifactError.at(path, f"no {what} in the compiled folder", "recompile: resgraph compile SPEC -o FOLDER") from None
    except OSError as e:   # no permission, a failing disk: the path, not the content
        raise PathError.at(path, f"cannot read the {what}: {e.strerror or e}", "check the path and its permissions") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError.at(path, f"the {what} is not a regular file (a pipe, a device or a folder)",
                                   "recompile: resgraph compile SPEC -o FOLDER")
        if st.st_size > limit:
            raise ArtifactError.at(path, f"the {what} is {st.st_size:,} bytes, more than a compiled folder's "
                                   f"{limit:,}", "recompile: resgraph compile SPEC -o FOLDER")
        return path, f.read(limit + 1)[:limit]


def read_manifest(folder: str) -> Manifest:
    from .limits import MAX_MANIFEST_BYTES
    if not os.path.lexists(os.path.join(folder, "manifest.json")):
        raise ArtifactError.at(folder, "not a compiled folder: no manifest.json",
                               "pass the folder resgraph compile wrote (compiled/NAME)")
    path, raw = read_folder_file(folder, "manifest.json", MAX_MANIFEST_BYTES, "manifest")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError.at(path, f"unreadable manifest: {e}", "recompile: resgraph compile SPEC -o FOLDER") from None
    except RecursionError:
        raise ArtifactError.at(path, "unreadable manifest: nested deeper than JSON readers go",
                               "recompile: resgraph compile SPEC -o FOLDER") from None
    return Manifest.from_json(d, path)


def read_spec(folder: str, manifest: Manifest) -> tuple[str, bytes]:
    """(path, bytes) of the spec compiled into `folder`, which must be the one the manifest hashed:
    a spec.yaml edited after compiling would describe another network than model.onnx."""
    import hashlib

    from .limits import MAX_SPEC_BYTES
    path, raw = read_folder_file(folder, manifest.spec, MAX_SPEC_BYTES, "folder's spec")
    if hashlib.sha256(raw).hexdigest() != manifest.spec_sha256:
        raise ArtifactError.at(path, "spec.yaml was changed after compiling (its sha256 is not the manifest's)",
                               "recompile the spec you mean: resgraph compile SPEC --weights W -o FOLDER")
    return path, raw


def write_manifest(path: str, manifest: Manifest) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")


def sha256_file(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_artifacts(folder: str, manifest: Manifest) -> dict[str, str]:
    """The artifacts that are not the files compile wrote: name -> their sha256 now ('missing' if gone)."""
    changed = {}
    for name, a in manifest.artifacts.items():
        try:
            digest = sha256_file(os.path.join(folder, name))
        except OSError:
            changed[name] = "missing"
            continue
        if digest != a.sha256:
            changed[name] = digest
    return changed


def onnx_metadata(m: Manifest) -> dict[str, str]:
    """model.onnx's metadata_props, derived from the manifest (one description, written twice): what
    a tool reading model.onnx alone (Netron, onnx.load) can know of its origin."""
    return {"resgraph.spec": m.name, "resgraph.spec_sha256": m.spec_sha256, "resgraph.version": m.resgraph_version,
            "resgraph.projections": json.dumps(list(m.projections)), "resgraph.preprocess": json.dumps(m.preprocess),
            "resgraph.labels": json.dumps(list(m.labels) if m.labels is not None else None),
            "resgraph.precision": m.precision, "resgraph.folded": str(m.folded).lower(),
            "resgraph.trained": str(m.trained).lower()}
