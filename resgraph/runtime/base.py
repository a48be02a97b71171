"""What every back end shares: the Session interface, its Options, and a back end's Availability.

The back ends (ort.py, torch_session.py, tensorrt.py) and the registry that picks one (session.py)
import this module; it imports none of them, so the registry can load a back end lazily without an
import circle.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..manifest import Manifest
from ..errors import DataError
from ..limits import MAX_SPATIAL
from .preprocess import Preprocess

INSTALL = {
    "onnx": "pip install 'resgraph[onnx]'",
    "gpu": "pip uninstall -y onnxruntime && pip install 'resgraph[gpu]'   (onnxruntime-gpu replaces onnxruntime)",
    "torch": "pip install 'resgraph[torch]'",
    "tensorrt": "pip install 'resgraph[tensorrt]'",
}


@dataclass(frozen=True)
class Options:
    threads: int | None = None        # CPU threads for one inference (ONNX Runtime intra-op; torch.set_num_threads)
    device_id: int = 0
    cuda_graph: bool = False          # capture one CUDA graph per batch size (ort-cuda, torch-cuda)
    torch_compile: bool = False       # torch.compile the module (torch back ends)
    amp: str | None = None            # torch-cuda autocast: fp16 | bf16 | off [default: the artifact's precision]
    channels_last: bool | None = None  # torch-cuda [default: on for image inputs]
    tf32: bool = False                # let fp32 convolutions and matmuls on CUDA use TF32 (faster; ~fp16's precision)
    verify: bool = True               # hash what the back end loads against the manifest (parity reports instead)


class Session:
    """A compiled folder opened on one back end. Subclasses set backend/device/precision and run()."""
    backend: str = ""
    device: str = "cpu"
    precision: str = "fp32"           # what the back end computes in

    def __init__(self, folder: str, manifest: Manifest, options: Options):
        self.folder, self.manifest, self.options = folder, manifest, options
        self.input_name, self.output_name = manifest.input.name, manifest.output.name
        self.input_shape, self.output_shape = manifest.input.sample_shape, manifest.output.sample_shape
        # every input and output (TensorInfo, spec order); where the model has size variables their
        # dims are names and expressions, and `sizes` holds each variable's valid sizes
        self.inputs, self.outputs, self.sizes = manifest.inputs, manifest.outputs, manifest.sizes
        self.labels = manifest.labels
        self.preprocess = checked_preprocess(manifest, folder)
        self.last_io: tuple[float, float] | None = None   # the last run's host->device, device->host seconds

    def run(self, x: np.ndarray) -> np.ndarray:
        """One batch through a model with one input and one output (at any valid size)."""
        raise NotImplementedError

    def run_all(self, feeds: dict) -> dict:
        """A batch of every input (name -> [N, ...] array) -> every output (name -> array), in spec
        order. The general form; run() is the one-input, one-output case of it."""
        self.one_to_one("run_all")   # back ends that run graphs with several override this
        return {self.output_name: self.run(feeds[self.input_name])}

    def one_to_one(self, what: str = "run") -> None:
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise DataError.at(self.input_name, f"{self.manifest.name} takes {len(self.inputs)} input(s) and gives "
                               f"{len(self.outputs)} output(s); {self.backend} {what}() takes one of each",
                               "use run_all({name: batch, ...}), which returns every output by name")

    def input_buffer(self, n: int, shape: tuple | None = None) -> np.ndarray:
        """A [n, *input shape] float32 array to write a batch into before run(): on a back end with a
        device it is the session's page-locked staging memory, which run() then sends to the GPU as is
        (no copy into it first); elsewhere a plain array. Valid until the next call. `shape`: the
        sample's shape where the model has size variables."""
        return np.empty((n, *(shape or self.input_shape)), self.manifest.input.dtype)

    def sample_shape(self, sizes: dict | None = None) -> tuple[int, ...]:
        """The first input's sample shape, with the size variables at `sizes` (default: the largest
        valid size of each)."""
        return self.manifest.input.at(self.default_sizes(sizes))

    def default_sizes(self, sizes: dict | None = None) -> dict:
        return {**{k: r.valid[-1] for k, r in self.sizes.items()}, **(sizes or {})}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.precision}"

    def check_batch(self, x: np.ndarray) -> np.ndarray:
        """The batch every back end accepts: [N, *input shape] in the input's dtype, C-contiguous."""
        if self.sizes:
            return self.check_feeds({self.input_name: x})[self.input_name]
        x = as_dtype(x, self.manifest.input)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError.at(self.input_name, f"a batch of shape {list(x.shape)}, but the model takes "
                               f"[N, {', '.join(map(str, self.input_shape))}]", "stack samples along a first axis")
        return x

    def check_feeds(self, feeds: dict) -> dict:
        """Every input, as every back end takes it: its dtype, C-contiguous, one batch size, each
        fixed dim the model's, each size variable one valid size across all inputs."""
        return check_feeds(self.inputs, self.sizes, feeds)

    def output_shapes(self, feeds: dict) -> dict:
        """name -> [N, ...] of every output for these (checked) feeds."""
        sizes = feed_sizes(self.inputs, feeds)
        n = next(iter(feeds.values())).shape[0]
        return {t.name: (n, *t.at(sizes)) for t in self.outputs}


def as_dtype(x, t) -> np.ndarray:
    """A batch for input `t` in its dtype, C-contiguous. Numbers convert to a float input's dtype; a
    uint8 input (raw pixels, normalised in the graph) takes uint8 only: floats fed to it are most
    likely already normalised, and casting them would silently give wrong answers."""
    x = np.asarray(x)
    if t.dtype == "uint8" and x.dtype != np.uint8:
        raise DataError.at(t.name, f"{x.dtype} values, but {t.name} takes uint8 raw pixels "
                           f"[N, {', '.join(map(str, t.sample_shape))}] (the model scales and normalises them itself)",
                           "send the image's pixels as uint8 after resizing and cropping, without normalising them")
    return np.ascontiguousarray(x, dtype=t.dtype)


def random_batch(rng, shape: tuple, dtype: str) -> np.ndarray:
    """Random samples as an input takes them (bench, parity): uniform raw pixels for a uint8 input (the
    model normalises them), standard normal ones (the normalised input space) for a float input."""
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)


def feed_sizes(inputs, feeds: dict) -> dict:
    """The size variables' values in (checked) feeds."""
    return {d: x.shape[1 + i] for t in inputs for x in (feeds[t.name],)
            for i, d in enumerate(t.sample_shape) if isinstance(d, str)}


def check_feeds(inputs, sizes: dict, feeds: dict) -> dict:
    """See Session.check_feeds; a DataError names the input and, for a size the model does not take,
    the nearest valid sizes."""
    names = [t.name for t in inputs]
    unknown = [k for k in feeds if k not in names]
    missing = [k for k in names if k not in feeds]
    if unknown or missing:
        raise DataError.at(missing[0] if missing else unknown[0],
                           f"the model takes {', '.join(names)}; " + (f"{', '.join(missing)} not given" if missing else
                                                                      f"{', '.join(unknown)} is not one of them"),
                           "feed every input by its name")
    out, seen, batch = {}, {}, None
    for t in inputs:
        x = as_dtype(feeds[t.name], t)
        want = t.sample_shape
        shown = "[N, " + ", ".join(map(str, want)) + "]"
        if x.ndim != len(want) + 1 or any(isinstance(d, int) and d != got for d, got in zip(want, x.shape[1:])):
            raise DataError.at(t.name, f"a batch of shape {list(x.shape)}, but the model takes {shown}",
                               "stack samples along a first axis")
        if batch is not None and x.shape[0] != batch:
            raise DataError.at(t.name, f"a batch of {x.shape[0]}, but {names[0]}'s is {batch}",
                               "give every input the same number of samples")
        batch = x.shape[0]
        for d, got in zip(want, x.shape[1:]):
            if not isinstance(d, str):
                continue
            if d in seen and seen[d] != got:
                raise DataError.at(t.name, f"{d} is {got} here but {seen[d]} in an earlier input",
                                   f"every input's {d} is the same size")
            r = sizes[d]
            if got not in r.valid:
                near = " or ".join(map(str, r.nearest(got)))
                raise DataError.at(t.name, f"{d} = {got} is not a size the model takes "
                                   f"({_compact(r.valid)})", f"the nearest valid sizes are {near}: resize or pad to one")
            seen[d] = got
        out[t.name] = x
    return out


def _compact(valid) -> str:
    from ..manifest import compact
    return compact(valid)


def checked_preprocess(manifest: Manifest, folder: str) -> Preprocess:
    """The manifest's preprocess and labels, checked against its shapes: a hand-edited or foreign
    manifest fails here, naming the field, not on every input later."""
    from ..errors import ArtifactError
    from .preprocess import FITS, PIL_FILTERS
    where = os.path.join(folder, "manifest.json")
    shape_in, shape_out = manifest.input.chw, manifest.output.sample_shape   # bounded: Manifest.from_json
    pre = manifest.preprocess
    for k in ("mean", "std"):
        v = pre.get(k)
        if v is not None and not (isinstance(v, list) and len(v) == shape_in[0] and
                                  all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise ArtifactError.at(where, f"preprocess.{k} is {v!r}, not {shape_in[0]} numbers (one per input channel)",
                                   "recompile: resgraph compile SPEC -o FOLDER")
    if pre.get("std") is not None and any(x <= 0 for x in pre["std"]):
        raise ArtifactError.at(where, "preprocess.std holds a value <= 0", "recompile: resgraph compile SPEC -o FOLDER")
    if pre.get("interpolation", "bilinear") not in PIL_FILTERS:
        raise ArtifactError.at(where, f"unknown preprocess.interpolation {pre.get('interpolation')!r}",
                               f"one of {', '.join(PIL_FILTERS)}")
    if pre.get("fit", FITS[0]) not in FITS:
        raise ArtifactError.at(where, f"unknown preprocess.fit {pre.get('fit')!r}", f"one of {', '.join(FITS)}")
    for k in ("resize", "crop"):   # the spec language's bounds: a forged resize of 10^6 would allocate 10^12 pixels
        if pre.get(k) is not None and not (isinstance(pre[k], int) and not isinstance(pre[k], bool)
                                           and 0 < pre[k] <= MAX_SPATIAL):
            raise ArtifactError.at(where, f"preprocess.{k} is {pre[k]!r}, not a positive integer up to {MAX_SPATIAL:,}",
                                   "recompile: resgraph compile SPEC -o FOLDER")
    if manifest.labels is not None and not any(len(t.sample_shape) in (1, 3) and t.sample_shape[0] == len(manifest.labels)
                                               for t in manifest.outputs):   # a vector's classes, or a map's channels
        raise ArtifactError.at(where, f"{len(manifest.labels)} labels for an output of shape {list(shape_out)}",
                               "recompile: resgraph compile SPEC -o FOLDER")
    raw = manifest.input.layout if manifest.input.dtype == "uint8" else None   # the graph normalises
    return Preprocess.from_json(pre, shape_in, manifest.sizes, raw)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str                       # why it is usable, or why not
    install: str | None = None        # what makes it usable, where a package is missing


def nvidia_gpu_visible() -> bool:
    """Cheap (no CUDA library loaded): the NVIDIA driver's /proc entry or /dev node."""
    return os.path.isdir("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus")) \
        or os.path.exists("/dev/nvidia0")


# what each back end loads from the folder and is hashed against the manifest here (a file absent from
# the manifest is not loaded: .data). Held elsewhere, not hashed twice: spec.yaml (read_spec) and
# model.engine (runtime.tensorrt.check_engine, against engine.json's sha256, which is checked here).
# "ort": its ONNX file, Manifest.onnx_file (an int8 folder's ort-trt: model.s8.onnx), and that file's .data
LOADS = {"ort": ("{onnx}", "{onnx}.data"), "torch": ("weights.safetensors",), "tensorrt": ("engine.json",)}


def loads(manifest: Manifest, backend: str) -> tuple[str, ...]:
    """The files `backend` loads from a folder with this manifest (LOADS, the ONNX file named)."""
    family = "ort" if backend.startswith("ort") else "torch" if backend.startswith("torch") else backend
    onnx = manifest.onnx_file(backend)
    return tuple(n.format(onnx=onnx) for n in LOADS.get(family, ()))


def verify_loaded(folder: str, manifest: Manifest, backend: str) -> None:
    """The files `backend` loads are the ones compile wrote (their sha256 is the manifest's): an
    ArtifactError otherwise, not a BackendError, so that `auto` does not pass over a damaged or
    missing model.onnx to another back end as if the machine lacked a package."""
    from ..errors import ArtifactError
    from ..manifest import sha256_file
    needed = loads(manifest, backend)
    if needed and needed[0] not in manifest.artifacts:
        raise ArtifactError.at(os.path.join(folder, "manifest.json"), f"the manifest lists no {needed[0]}, which "
                               f"{backend} runs", "recompile: resgraph compile SPEC --weights W -o FOLDER")
    for name in (n for n in needed if n in manifest.artifacts):
        path = os.path.join(folder, name)
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            raise ArtifactError.at(path, f"{name} is missing from the compiled folder",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER (or name another "
                                   "back end with --backend)") from None
        if digest != manifest.artifacts[name].sha256:
            raise ArtifactError.at(path, f"{name} is not the file compile wrote (its sha256 is not the manifest's)",
                                   "recompile: resgraph compile SPEC --weights W -o FOLDER; resgraph parity FOLDER "
                                   "shows how far it is from the checkpoint")


def cpu_warning(manifest: Manifest, backend: str) -> str | None:
    """Where `backend` runs an int8 folder's model on this CPU's integer kernels (ort-cpu) and this
    CPU's integer dot product is weaker than the one its accuracy gate ran on (runtime.cpu.weaker_than:
    without VNNI, u8 x s8 pairs saturate), the warning `run` and `bench` give; else None."""
    if manifest.quantization is None or backend != "ort-cpu":
        return None
    from .cpu import weaker_than
    why = weaker_than(manifest.quantization.cpu)
    return f"{manifest.name} is int8: {why}" if why else None
