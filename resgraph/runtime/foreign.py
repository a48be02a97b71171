"""A plain ONNX file that resgraph did not compile, opened as a compiled folder is.

    m = foreign_model("resnet50.onnx", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                        "resize": 256, "crop": 224}, labels=None)
    with open_session(m, "ort-cpu") as s: ...        # runtime.session routes it here

The file itself says what a manifest would: its inputs and outputs (names, dtypes, shapes), its opset,
its precision (the float initializers' dtype), its parameters and MACs (Conv, Gemm and MatMul nodes,
counted from ONNX shape inference). The preprocess and labels come from the caller (run's --mean,
--std, --resize, --crop, --interpolation, --labels), else from the file's metadata_props where
resgraph wrote them (`resgraph.preprocess`, `resgraph.labels`: a model.onnx copied out of its
folder), else none (inputs fed as .npy). There is no spec and no checkpoint: only ONNX Runtime's back
ends (FOREIGN_BACKENDS) run it.

It is read as untrusted input, with a compiled folder's bounds (Manifest.out_of_bounds: the spec
language's shapes, at most MAX_IO inputs and outputs, their dtypes), and more that a folder's hash
gave before: a regular file under protobuf's 2 GiB that onnx.checker accepts, every external-data
tensor in a plain file inside the model's own folder (no absolute path, no `..`, no symlink out, its
offset and length within the file), an opset ONNX Runtime reads, every dim but the batch fixed, and
a batch that is symbolic or 1. Nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np

from ..errors import ArtifactError, BackendError, DataError, OptionError, PathError
from ..manifest import Manifest, TensorInfo
from .base import checked_preprocess
from .ort import OrtSession

FOREIGN_BACKENDS = ("ort-trt", "ort-cuda", "ort-cpu")   # no spec: no torch module; no model.engine
MAX_ONNX_BYTES = 2**31 - 1       # the most one protobuf message (the .onnx file) may hold
DTYPES = {1: "float32", 10: "float16", 2: "uint8"}       # onnx.TensorProto's codes of Manifest's DTYPES
PREPROCESS_KEYS = ("mean", "std", "resize", "crop", "interpolation", "fit")
RECOMPILE = "export it again, or give a model resgraph compiled (resgraph import, then resgraph compile)"


class ForeignModel(str):
    """A plain ONNX file's path (a str, so that reports and messages print it as they print a folder)
    carrying the manifest made from it; `batch`: the first dim where the file fixes it (1), else None."""
    manifest: Manifest
    batch: int | None

    def __new__(cls, path: str, manifest: Manifest, batch: int | None):
        s = super().__new__(cls, path)
        s.manifest, s.batch = manifest, batch
        return s

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self))

    @property
    def onnx_file(self) -> str:
        return os.path.basename(self)


def is_plain_onnx(artifact) -> bool:
    """A .onnx file with no manifest.json beside it (a compiled folder's model.onnx has one); another
    file is left to the compiled folder's checks ("not a compiled folder")."""
    if isinstance(artifact, ForeignModel):
        return True
    return str(artifact).lower().endswith(".onnx") and os.path.isfile(artifact) and not os.path.isfile(
        os.path.join(os.path.dirname(artifact) or ".", "manifest.json"))


def model_of(artifact: str, preprocess: dict | None = None, labels_file: str | None = None):
    """What run, bench and parity open: a compiled folder's path as given, or a plain ONNX file's
    ForeignModel. Preprocess flags and --labels are for a plain ONNX file only (a folder's are its spec's)."""
    if isinstance(artifact, ForeignModel):
        return artifact
    if is_plain_onnx(artifact):
        return foreign_model(artifact, preprocess, labels_file)
    given = [f"--{k}" for k, v in (preprocess or {}).items() if v is not None] + (["--labels"] if labels_file else [])
    if given:
        raise OptionError.at(given[0], f"{given[0]} is for a plain ONNX file; a compiled folder's preprocess and "
                             "labels are its spec's", f"leave {', '.join(given)} out, or recompile with a changed spec")
    return artifact


def manifest_of(artifact) -> Manifest:
    """The manifest of what model_of gave: a ForeignModel's own, else the compiled folder's."""
    if isinstance(artifact, ForeignModel):
        return artifact.manifest
    from ..manifest import folder_of, read_manifest
    return read_manifest(folder_of(artifact))


def foreign_model(path: str, preprocess: dict | None = None, labels_file: str | None = None) -> ForeignModel:
    """Read, check and describe a plain ONNX file (see the module's docstring); `preprocess`: the
    flags' keys (None values: not given), which replace the file's metadata as a whole."""
    raw = read_bounded(path)
    model = parse(path, raw)
    check_external_data(model, path)
    check_model(model, path)
    inputs, outputs, batch = io_of(model, path)
    meta = {p.key: p.value for p in model.metadata_props}
    flags = {k: v for k, v in (preprocess or {}).items() if v is not None}
    pre, pre_from = (flags, "the preprocess flags") if flags else (_meta_json(meta, "resgraph.preprocess", path), None)
    if pre is not None and not isinstance(pre, dict):
        raise ArtifactError.at(path, "its metadata resgraph.preprocess is not a mapping", "give the preprocess flags")
    labels = read_labels(labels_file) if labels_file else _meta_labels(meta, path)
    manifest = Manifest(
        name=os.path.splitext(os.path.basename(path))[0], resgraph_version=_version(), spec_sha256=
        hashlib.sha256(raw).hexdigest(), spec_source=path, trained=True, weights_source=path,
        precision=precision_of(model), opset=opset_of(model), folded=False, input=inputs[0], output=outputs[0],
        inputs=inputs, outputs=outputs, preprocess={k: v for k, v in (pre or {}).items() if k in PREPROCESS_KEYS},
        labels=labels, params=params_of(model), macs=macs_of(model))
    problem = manifest.out_of_bounds()
    if problem:
        raise ArtifactError.at(path, f"a model resgraph cannot run: {problem}", RECOMPILE)
    _check_preprocess(manifest, path, pre_from or ("--labels" if labels_file else None))
    return ForeignModel(path, manifest, batch)


def read_bounded(path: str) -> bytes:
    """The file's bytes: a regular file (a FIFO would block, /dev/zero never end) of at most
    MAX_ONNX_BYTES, checked before it is read."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PathError.at(path, "no such ONNX file or compiled folder", "give a .onnx file or a compiled folder") from None
    except OSError as e:
        raise PathError.at(path, f"cannot read it: {e.strerror or e}", "check the path and its permissions") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError.at(path, "not a regular file (a pipe or a device)", "give a .onnx file")
        if st.st_size > MAX_ONNX_BYTES:
            raise ArtifactError.at(path, f"{st.st_size:,} bytes, more than one ONNX protobuf holds ({MAX_ONNX_BYTES:,})",
                                   "save the weights as external data beside it (onnx.save(..., save_as_external_data=True))")
        return f.read(MAX_ONNX_BYTES + 1)[:MAX_ONNX_BYTES]


def parse(path: str, raw: bytes):
    """The ModelProto (external data not loaded)."""
    import onnx
    from google.protobuf.message import DecodeError
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ArtifactError.at(path, f"not an ONNX model: {str(e)[:200] or type(e).__name__}",
                               "give a .onnx file written by an ONNX exporter") from None
    if not model.graph.node and not model.graph.output:
        raise ArtifactError.at(path, "not an ONNX model: no graph", "give a .onnx file written by an ONNX exporter")
    return model


def check_model(model, path: str) -> None:
    """onnx.checker's verdict (after check_external_data: it reads the external files from the model's
    folder). An opset newer than this onnx knows is left to the back end's own check (check_opset)."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    if opset_of(model) > onnx.defs.onnx_opset_version():
        return
    try:
        onnx.checker.check_model(path if any(uses_external_data(t) for t in _tensors(model)) else model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        raise ArtifactError.at(path, f"onnx.checker refuses the model: {str(e).strip().splitlines()[0][:300]}",
                               RECOMPILE) from None


def _tensors(model):
    """Every TensorProto of the model (initializers and attribute tensors, subgraphs included)."""
    from onnx.external_data_helper import _get_all_tensors
    return _get_all_tensors(model)


def check_external_data(model, path: str) -> None:
    """Every external-data tensor's `location` is a plain file inside the model's folder (no absolute
    path, no `..`, nothing a symlink leads out to), its offset and length within that file."""
    from onnx.external_data_helper import uses_external_data
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for t in _tensors(model):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"tensor '{t.name}''s external data location {loc!r}"
        parts = loc.replace("\\", "/").split("/")
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ArtifactError.at(path, f"{where} is not a file inside the model's folder",
                                   "keep the weights file beside the .onnx file (a relative location, no '..')")
        real = os.path.realpath(os.path.join(folder, loc))
        if os.path.commonpath([real, folder]) != folder:
            raise ArtifactError.at(path, f"{where} leads outside the model's folder (to {real})",
                                   "keep the weights file itself beside the .onnx file, not a link out")
        if not os.path.isfile(real):
            raise ArtifactError.at(path, f"{where}: no such file beside the model", "copy it beside the .onnx file")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise ArtifactError.at(path, f"{where} has an offset or length that is not a number", RECOMPILE) from None
        if offset < 0 or offset + max(length, 0) > os.path.getsize(real):
            raise ArtifactError.at(path, f"{where}: offset {offset:,} and length {length:,} reach past the file's "
                                   f"{os.path.getsize(real):,} bytes", "copy the weights file whole beside the .onnx file")


def io_of(model, path: str) -> tuple[tuple, tuple, int | None]:
    """(inputs, outputs) as TensorInfo ('batch' first), and the batch where the file fixes it. The
    graph's inputs that are initializers (older exporters list them) are weights, not inputs."""
    init = {t.name for t in model.graph.initializer}
    ins = [v for v in model.graph.input if v.name not in init]
    batches, out = set(), []
    for kind, values in (("input", ins), ("output", model.graph.output)):
        infos = []
        for v in values:
            info, batch = tensor_info(v, kind, path)
            infos.append(info)
            batches.add(batch)
        out.append(tuple(infos))
    if not out[0] or not out[1]:
        raise ArtifactError.at(path, "the model has no input or no output", RECOMPILE)
    fixed = {b for b in batches if b is not None}
    if fixed - {1} or (fixed and None in batches and len(out[0]) > 1):
        raise ArtifactError.at(path, f"its first dims are fixed at {sorted(fixed)}: resgraph runs models whose batch "
                               "dim is symbolic, or 1", "export with a dynamic batch (torch.onnx.export's "
                               "dynamic_axes or dynamic_shapes)")
    return out[0], out[1], 1 if fixed else None


def tensor_info(v, kind: str, path: str) -> tuple[TensorInfo, int | None]:
    """One graph input or output: (TensorInfo, its fixed batch or None). Every dim but the first must be
    a number (resgraph's size variables come from a spec, which a plain file does not have)."""
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or not t.HasField("shape"):
        raise ArtifactError.at(path, f"{kind} '{v.name}' is not a tensor of known rank", RECOMPILE)
    dtype = DTYPES.get(t.elem_type)
    if dtype is None:
        import onnx
        name = onnx.TensorProto.DataType.Name(t.elem_type) if t.elem_type in onnx.TensorProto.DataType.values() else t.elem_type
        raise ArtifactError.at(path, f"{kind} '{v.name}' is {name}; resgraph runs float32, float16 and uint8 tensors",
                               RECOMPILE)
    dims = list(t.shape.dim)
    if not dims:
        raise ArtifactError.at(path, f"{kind} '{v.name}' is a scalar, with no batch dim", RECOMPILE)
    for i, d in enumerate(dims[1:], 1):
        if not d.HasField("dim_value"):
            raise ArtifactError.at(path, f"{kind} '{v.name}''s dim {i} is {d.dim_param or 'unnamed'!r}, not a number: "
                                   "resgraph runs a plain ONNX file at fixed sizes, the batch alone symbolic",
                                   "export it with that dim fixed (torch.onnx.export without it in dynamic_axes)")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
    return TensorInfo(v.name, ("batch", *(d.dim_value for d in dims[1:])), dtype), batch


def opset_of(model) -> int:
    """The default (ai.onnx) domain's opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ort_max_opset() -> int | None:
    """The newest ai.onnx opset this ONNX Runtime knows: the highest since_version of its operator
    schemas (a new opset is cut only where an operator changes). None where the build lists none."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C
        return max(s.since_version for s in C.get_all_operator_schema() if s.domain in ("", "ai.onnx"))
    except (ImportError, AttributeError, ValueError):
        return None


def check_opset(model: "ForeignModel", backend: str) -> None:
    """A BackendError where the back end's ONNX Runtime cannot read the model's opset."""
    import onnxruntime
    top, opset = ort_max_opset(), model.manifest.opset
    if top is not None and opset > top:
        raise BackendError.at(model, f"opset {opset}, but ONNX Runtime {onnxruntime.__version__} ({backend}) reads "
                              f"opsets up to {top}", f"export it at opset {top} or lower (torch.onnx.export's "
                              "opset_version), or upgrade onnxruntime")


def precision_of(model) -> str:
    """fp16 where most float initializer elements are float16, else fp32 (what parity's tolerance follows)."""
    counts = {1: 0, 10: 0}
    for t in model.graph.initializer:
        if t.data_type in counts:
            counts[t.data_type] += math.prod(t.dims)
    return "fp16" if counts[10] > counts[1] else "fp32"


def params_of(model) -> int:
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in (1, 10, 11, 16))


def macs_of(model) -> int:
    """Multiply-adds per sample of the Conv, Gemm and MatMul nodes (ONNX shape inference's shapes, a
    weight's dims from its initializer): 0 where shape inference cannot tell."""
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001  (onnx raises its own kinds; MACs are a figure, not a check)
        return 0
    g = inferred.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
              for v in (*g.value_info, *g.input, *g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    total = 0
    for n in g.node:
        out, w = shapes.get(n.output[0], []), shapes.get(n.input[1], []) if len(n.input) > 1 else []
        if not out or not w or 0 in out[1:] or 0 in w:
            continue
        if n.op_type == "Conv":
            total += math.prod(out[1:]) * math.prod(w[1:])
        elif n.op_type == "Gemm":
            k = w[0] if not any(a.name == "transB" and a.i for a in n.attribute) else w[1]
            total += math.prod(out[1:]) * k
        elif n.op_type == "MatMul":
            total += math.prod(out[1:]) * w[-2 if len(w) > 1 else 0]
    return total


def read_labels(path: str) -> tuple[str, ...]:
    """--labels FILE: one class name a line (blank lines at the end dropped), bounded as a spec's."""
    import stat

    from ..limits import MAX_LABELS, MAX_LABELS_BYTES
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise PathError.at(path, f"cannot read the labels file: {e.strerror or e}", "one class name a line") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PathError.at(path, "the labels file is not a regular file", "one class name a line")
        data = f.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise OptionError.at("--labels", f"{path} is larger than {MAX_LABELS_BYTES >> 20} MiB", "one class name a line")
    try:
        names = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise OptionError.at("--labels", f"{path} is not UTF-8 text: {e}", "one class name a line") from None
    while names and not names[-1].strip():
        names.pop()
    if not names or len(names) > MAX_LABELS:
        raise OptionError.at("--labels", f"{path} holds {len(names):,} names", f"1 to {MAX_LABELS:,}, one a line")
    return tuple(n.strip() for n in names)


def _meta_json(meta: dict, key: str, path: str):
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError):
        raise ArtifactError.at(path, f"its metadata {key} is not JSON", "drop the key, or give the flags") from None


def _meta_labels(meta: dict, path: str) -> tuple[str, ...] | None:
    v = _meta_json(meta, "resgraph.labels", path)
    if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise ArtifactError.at(path, "its metadata resgraph.labels is not a list of names", "give --labels FILE")
    return tuple(v) if v is not None else None


def _check_preprocess(manifest: Manifest, path: str, from_flags: str | None) -> None:
    """The preprocess and labels against the model's shapes (checked_preprocess's checks), the
    error naming where they came from; a crop that is not the input's own size is refused."""
    pre = manifest.preprocess
    try:
        checked_preprocess(manifest, os.path.dirname(path) or ".")
    except ArtifactError as e:
        message = e.diagnostics[0].message
        if from_flags:
            named = next((k for k in ("std", "mean", "resize", "crop", "interpolation", "labels") if k in message), "mean")
            raise OptionError.at(f"--{named}", f"{from_flags}: {message}",
                                 "--mean and --std take one number per input channel; --labels one name per class") \
                from None
        raise ArtifactError.at(path, f"its metadata: {message}", "give the preprocess flags instead") from None
    shape = manifest.input.sample_shape
    crop = pre.get("crop")
    if crop is not None and len(shape) == 3 and (shape[1], shape[2]) != (crop, crop):
        raise OptionError.at("--crop", f"--crop {crop}, but the model's input is {shape[1]}x{shape[2]}",
                             f"--crop {shape[1]}" if shape[1] == shape[2] else "leave --crop out")


def _version() -> str:
    from ..version import __version__
    return __version__


class ForeignSession(OrtSession):
    """A plain ONNX file on ONNX Runtime: OrtSession with the file's own name, its opset checked
    first, and a fixed batch (1) enforced with a DataError rather than ONNX Runtime's message."""

    def __init__(self, model: ForeignModel, options, cuda: bool, tensorrt: bool = False):
        check_opset(model, "ort-trt" if tensorrt else "ort-cuda" if cuda else "ort-cpu")
        self.fixed_batch = model.batch
        super().__init__(model.folder, model.manifest, options, cuda=cuda, tensorrt=tensorrt, onnx_file=model.onnx_file)

    def _batch(self, n: int) -> None:
        if self.fixed_batch is not None and n != self.fixed_batch:
            raise DataError.at(self.input_name, f"a batch of {n}, but {self.onnx}'s batch dim is fixed at "
                               f"{self.fixed_batch}", f"run it with --batch-size {self.fixed_batch}, or export it "
                               "with a dynamic batch")

    def run(self, x: np.ndarray) -> np.ndarray:
        self._batch(len(x))
        return super().run(x)

    def run_all(self, feeds: dict) -> dict:
        self._batch(len(next(iter(feeds.values()))))
        return super().run_all(feeds)
