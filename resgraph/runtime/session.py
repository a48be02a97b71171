"""One interface over every back end: a Session opens a compiled folder and runs numpy batches.

    s = open_session("compiled/resnet50", backend="auto")
    y = s.run(x)          # x: [N, *input shape] float32 -> [N, *output shape] float32

Back ends (name: what it runs)
    tensorrt     model.engine with TensorRT (`compile --engine` or `engine build` makes it; runtime/tensorrt.py)
    ort-trt      model.onnx on ONNX Runtime's TensorRT execution provider (engines cached in the folder);
                 only when named: its first session builds engines for minutes
    ort-cuda     model.onnx on ONNX Runtime's CUDA execution provider (onnxruntime-gpu), I/O bound on the device
    torch-cuda   the PyTorch module rebuilt from spec.yaml + weights.safetensors, on the GPU
    ort-cpu      model.onnx on ONNX Runtime's CPU execution provider
    torch-cpu    the PyTorch module on the CPU
`auto` takes the first usable one in AUTO_ORDER (fastest first) and says why the others were passed
over; `ort` / `onnxruntime` and `torch` take that package's GPU form where usable, else its CPU one.
Probing imports nothing heavy: a back end's package is imported when that back end is opened
(torch only where an NVIDIA GPU is visible), so the ONNX Runtime path runs without torch.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..artifacts import Manifest, read_manifest
from ..errors import BackendError, DataError
from .preprocess import Preprocess

AUTO_ORDER = ("tensorrt", "ort-cuda", "torch-cuda", "ort-cpu", "torch-cpu")
ALIASES = {"ort": ("ort-cuda", "ort-cpu"), "onnxruntime": ("ort-cuda", "ort-cpu"), "torch": ("torch-cuda", "torch-cpu"),
           "trt": ("tensorrt",)}
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
    rebuild: bool = False             # tensorrt: rebuild a model.engine that cannot run here instead of refusing it


class Session:
    """A compiled folder opened on one back end. Subclasses set backend/device/precision and run()."""
    backend: str = ""
    device: str = "cpu"
    precision: str = "fp32"           # what the back end computes in

    def __init__(self, folder: str, manifest: Manifest, options: Options):
        self.folder, self.manifest, self.options = folder, manifest, options
        self.input_name, self.output_name = manifest.input.name, manifest.output.name
        self.input_shape, self.output_shape = manifest.input.sample_shape, manifest.output.sample_shape
        self.labels = manifest.labels
        self.preprocess = _checked_preprocess(manifest, folder)
        self.last_io: tuple[float, float] | None = None   # the last run's host->device, device->host seconds

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def input_buffer(self, n: int) -> np.ndarray:
        """A [n, *input shape] float32 array to write a batch into before run(): on a back end with a
        device it is the session's page-locked staging memory, which run() then sends to the GPU as is
        (no copy into it first); elsewhere a plain array. Valid until the next call."""
        return np.empty((n, *self.input_shape), np.float32)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        return f"{self.backend} on {self.device}, {self.precision}"

    def check_batch(self, x: np.ndarray) -> np.ndarray:
        """The batch every back end accepts: [N, *input shape] float32, C-contiguous."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError.at(self.input_name, f"a batch of shape {list(x.shape)}, but the model takes "
                               f"[N, {', '.join(map(str, self.input_shape))}]", "stack samples along a first axis")
        return x


def _checked_preprocess(manifest: Manifest, folder: str) -> Preprocess:
    """The manifest's preprocess and labels, checked against its shapes: a hand-edited or foreign
    manifest fails here, naming the field, not on every input later."""
    from ..errors import ArtifactError
    from .preprocess import PIL_FILTERS
    where = os.path.join(folder, "manifest.json")
    shape_in, shape_out = manifest.input.sample_shape, manifest.output.sample_shape
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in (*shape_in, *shape_out)):
        raise ArtifactError.at(where, f"input/output shapes {list(shape_in)} / {list(shape_out)} are not positive "
                               "integers", "recompile: resgraph compile SPEC -o FOLDER")
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
    for k in ("resize", "crop"):
        if pre.get(k) is not None and not (isinstance(pre[k], int) and pre[k] > 0):
            raise ArtifactError.at(where, f"preprocess.{k} is {pre[k]!r}, not a positive integer",
                                   "recompile: resgraph compile SPEC -o FOLDER")
    if manifest.labels is not None and (len(shape_out) != 1 or len(manifest.labels) != shape_out[0]):
        raise ArtifactError.at(where, f"{len(manifest.labels)} labels for an output of shape {list(shape_out)}",
                               "recompile: resgraph compile SPEC -o FOLDER")
    return Preprocess.from_json(pre, shape_in)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str                       # why it is usable, or why not
    install: str | None = None        # what makes it usable, where a package is missing


@dataclass(frozen=True)
class Backend:
    name: str
    probe: Callable[[str | None], Availability]      # folder (None: this machine alone, for doctor)
    open: Callable[[str, Manifest, Options], Session]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def nvidia_gpu_visible() -> bool:
    """Cheap (no CUDA library loaded): the NVIDIA driver's /proc entry or /dev node."""
    return os.path.isdir("/proc/driver/nvidia/gpus") and bool(os.listdir("/proc/driver/nvidia/gpus")) \
        or os.path.exists("/dev/nvidia0")


def _ort_probe(cuda: bool, tensorrt: bool = False):
    def probe(folder):
        if not _has("onnxruntime"):
            return Availability(False, "onnxruntime is not installed", INSTALL["gpu" if cuda else "onnx"])
        import onnxruntime as ort
        if tensorrt:
            if "TensorrtExecutionProvider" not in ort.get_available_providers():
                return Availability(False, f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider",
                                    INSTALL["gpu"] + " and TensorRT's libraries (docs/tensorrt.md)")
            if not nvidia_gpu_visible():
                return Availability(False, "no NVIDIA GPU visible")
            return Availability(True, f"onnxruntime {ort.__version__}, TensorrtExecutionProvider")
        if not cuda:
            return Availability(True, f"onnxruntime {ort.__version__}, CPUExecutionProvider")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return Availability(False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the CPU-only "
                                "package)", INSTALL["gpu"])
        if not nvidia_gpu_visible():
            return Availability(False, "no NVIDIA GPU visible")
        return Availability(True, f"onnxruntime {ort.__version__}, CUDAExecutionProvider")
    return probe


def _torch_probe(cuda: bool):
    def probe(folder):
        if not (_has("torch") and _has("safetensors")):
            return Availability(False, "torch is not installed", INSTALL["torch"])
        if folder is not None and not os.path.isfile(os.path.join(folder, "spec.yaml")):
            return Availability(False, f"no spec.yaml in {folder} to rebuild the module from",
                                "recompile with this resgraph (resgraph compile SPEC --weights W -o FOLDER)")
        if not cuda:
            return Availability(True, "torch, on the CPU")
        if not nvidia_gpu_visible():   # before importing torch: 1-2 s that a CPU machine need not pay
            return Availability(False, "no NVIDIA GPU visible")
        import torch
        if not torch.cuda.is_available():
            return Availability(False, f"torch {torch.__version__} sees no CUDA device (a CPU build?)")
        return Availability(True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
    return probe


def _open_ort(cuda: bool, tensorrt: bool = False):
    def open_(folder, manifest, options):
        from .ort import OrtSession
        return OrtSession(folder, manifest, options, cuda=cuda, tensorrt=tensorrt)
    return open_


def _open_torch(cuda: bool):
    def open_(folder, manifest, options):
        from .torch_session import TorchSession
        return TorchSession(folder, manifest, options, cuda=cuda)
    return open_


def _trt_probe(folder):
    from .tensorrt import probe
    return probe(folder)


def _trt_open(folder, manifest, options):
    from .tensorrt import open_engine
    return open_engine(folder, manifest, options)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("tensorrt", _trt_probe, _trt_open),
    Backend("ort-trt", _ort_probe(True, tensorrt=True), _open_ort(True, tensorrt=True)),
    Backend("ort-cuda", _ort_probe(True), _open_ort(True)),
    Backend("torch-cuda", _torch_probe(True), _open_torch(True)),
    Backend("ort-cpu", _ort_probe(False), _open_ort(False)),
    Backend("torch-cpu", _torch_probe(False), _open_torch(False)),
)}
assert [b for b in BACKENDS if b in AUTO_ORDER] == list(AUTO_ORDER)


def choose(name: str, folder: str | None, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """(the back end to open, why): `auto` and the aliases pick the first usable candidate; an
    unusable explicit choice is a BackendError naming what to install."""
    if name in BACKENDS:
        a = BACKENDS[name].probe(folder)
        if not a.ok:
            raise BackendError.at(name, f"the {name} back end is not usable here: {a.reason}",
                                  a.install or f"see resgraph doctor; other back ends: {', '.join(AUTO_ORDER)}")
        return name, a.reason
    if name != "auto" and name not in ALIASES:
        from ..errors import did_you_mean
        raise BackendError.at(name, f"unknown back end '{name}'",
                              did_you_mean(name, [*AUTO_ORDER, *ALIASES, "auto"], "back ends"))
    passed, installs = [], set()
    candidates = [c for c in (AUTO_ORDER if name == "auto" else ALIASES[name]) if c not in exclude]
    for cand in candidates:
        a = BACKENDS[cand].probe(folder)
        if a.ok:
            why = f"{name}: {a.reason}" + (f"; passed over {'; '.join(passed)}" if passed else "")
            return cand, why
        passed.append(f"{cand} ({a.reason})")
        installs |= {a.install} - {None}
    installs = sorted(installs)
    raise BackendError.at(name, f"no usable back end: {'; '.join(passed)}",
                          " or ".join(installs) if installs else "see resgraph doctor")


def open_session(artifact: str, backend: str = "auto", options: Options | None = None) -> Session:
    """Open a compiled folder (or the model.onnx inside one) on a back end; `session.why` says why that one.

    Where `auto` or an alias chose, a back end that probes usable but fails to open (onnxruntime-gpu
    lists its CUDA provider even when the CUDA or cuDNN libraries it needs are missing) is passed
    over for the next candidate, and the reason joins `why`."""
    from ..artifacts import folder_of
    folder = folder_of(artifact)
    manifest = read_manifest(folder)
    options = options or Options()
    failed: list[str] = []
    while True:
        try:
            name, why = choose(backend, folder, exclude=tuple(n for n, _ in failed))
        except BackendError:
            if not failed:
                raise
            raise BackendError.at(backend, "no back end could open the model: " + "; ".join(f"{n} ({m})" for n, m in failed),
                                  "see resgraph doctor") from None
        try:
            s = BACKENDS[name].open(folder, manifest, options)
        except BackendError as e:
            if backend in BACKENDS:
                raise
            failed.append((name, e.message))
            continue
        if failed:
            why += "; failed to open " + "; ".join(f"{n} ({m})" for n, m in failed)
        s.why = why
        return s
