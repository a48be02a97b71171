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
`auto` takes the first usable one in AUTO_ORDER (a fixed order, the one expected to be fastest, not
measured: `bench --backend all` measures) and says why the others were passed
over; `ort` / `onnxruntime` and `torch` take that package's GPU form where usable, else its CPU one.
Probing imports nothing heavy: a back end's package is imported when that back end is opened
(torch only where an NVIDIA GPU is visible), so the ONNX Runtime path runs without torch.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

from ..manifest import Manifest, folder_of, read_manifest
from ..errors import BackendError
from .base import INSTALL, Availability, Options, Session, nvidia_gpu_visible, verify_loaded

AUTO_ORDER = ("tensorrt", "ort-cuda", "torch-cuda", "ort-cpu", "torch-cpu")
ALIASES = {"ort": ("ort-cuda", "ort-cpu"), "onnxruntime": ("ort-cuda", "ort-cpu"), "torch": ("torch-cuda", "torch-cpu"),
           "trt": ("tensorrt",)}


@dataclass(frozen=True)
class Backend:
    name: str
    probe: Callable[[str | None], Availability]      # folder (None: this machine alone, for doctor)
    open: Callable[[str, Manifest, Options], Session]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, from its distribution's metadata (nothing imported): the
    `tensorrt` meta-package, or the CUDA-specific wheel pip installs under it."""
    import importlib.metadata as md
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def ort_trt_problem(ort_version: str, trt_version: str | None) -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot use this TensorRT, or None. It links TensorRT's
    libraries, which a pip-installed TensorRT makes loadable only once `import tensorrt` has run (we
    import it before the session); TensorRT 11 changed its ABI: onnxruntime-gpu 1.27 is the first
    release built against it (NVIDIA's TensorRT 10 -> 11 migration notes)."""
    if trt_version is None:
        return "tensorrt is not installed (the provider loads TensorRT's libraries)"
    v = lambda s: tuple(int(p) for p in s.split("+")[0].split(".")[:2] if p.isdigit())  # noqa: E731
    if v(trt_version) >= (11,) and v(ort_version) < (1, 27):
        return (f"TensorRT {trt_version} needs onnxruntime-gpu 1.27 or later for its TensorRT provider; this is "
                f"{ort_version}")
    return None


def _ort_probe(cuda: bool, tensorrt: bool = False):
    def probe(folder):
        if not _has("onnxruntime"):
            return Availability(False, "onnxruntime is not installed", INSTALL["gpu" if cuda else "onnx"])
        import onnxruntime as ort
        if tensorrt:
            if "TensorrtExecutionProvider" not in ort.get_available_providers():
                return Availability(False, f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider",
                                    INSTALL["gpu"] + " and TensorRT's libraries (docs/tensorrt.md)")
            problem = ort_trt_problem(ort.__version__, tensorrt_version() if _has("tensorrt") else None)
            if problem:
                return Availability(False, problem, "pip install -U 'resgraph[gpu,tensorrt]' (docs/tensorrt.md)")
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
        from .foreign import ForeignModel, ForeignSession
        from .ort import OrtSession
        if tensorrt:   # a pip-installed TensorRT's libnvinfer loads only once tensorrt_libs is imported
            try:
                importlib.import_module("tensorrt")
            except ImportError as e:
                raise BackendError.at("ort-trt", f"TensorRT cannot be imported ({e}): ONNX Runtime's TensorRT "
                                      "provider needs its libraries", INSTALL["tensorrt"]) from None
        if isinstance(folder, ForeignModel):   # a plain ONNX file: its own name, its opset checked
            return ForeignSession(folder, options, cuda=cuda, tensorrt=tensorrt)
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


def probe(name: str, folder: str | None) -> Availability:
    """Whether back end `name` can open `folder` here. A plain ONNX file (runtime.foreign) has no spec
    to rebuild a torch module from and no model.engine: ONNX Runtime's back ends alone run it."""
    from .foreign import FOREIGN_BACKENDS, ForeignModel
    if isinstance(folder, ForeignModel) and name not in FOREIGN_BACKENDS:
        why = ("it has no model.engine (ort-trt runs it on TensorRT)" if name == "tensorrt" else
               "it has no spec.yaml and weights to rebuild a torch module from")
        return Availability(False, f"{os.path.basename(folder)} is a plain ONNX file: {why}",
                            f"name {', '.join(FOREIGN_BACKENDS)}; or import and compile the model into a folder")
    return BACKENDS[name].probe(folder)


def choose(name: str, folder: str | None, exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """(the back end to open, why): `auto` and the aliases pick the first usable candidate; an
    unusable explicit choice is a BackendError naming what to install."""
    if name in BACKENDS:
        a = probe(name, folder)
        if not a.ok:
            raise BackendError.at(name, f"the {name} back end is not usable here: {a.reason}",
                                  a.install or f"see resgraph doctor; other back ends: {', '.join(AUTO_ORDER)}")
        return name, a.reason
    if name != "auto" and name not in ALIASES:
        from ..errors import did_you_mean
        raise BackendError.at(name, f"unknown back end '{name}'",
                              did_you_mean(name, [*AUTO_ORDER, *ALIASES, "auto"], "back ends"))
    passed, installs = [], set()
    from .foreign import FOREIGN_BACKENDS, ForeignModel
    only = FOREIGN_BACKENDS if isinstance(folder, ForeignModel) else BACKENDS   # a plain ONNX file: ONNX Runtime's
    candidates = [c for c in (AUTO_ORDER if name == "auto" else ALIASES[name]) if c not in exclude]
    candidates = [c for c in candidates if c in only] or candidates   # none of them: each says why
    for cand in candidates:
        a = probe(cand, folder)
        if a.ok:
            why = f"{name}: {a.reason}" + (f"; passed over {'; '.join(passed)}" if passed else "")
            return cand, why
        passed.append(f"{cand} ({a.reason})")
        installs |= {a.install} - {None}
    installs = sorted(installs)
    raise BackendError.at(name, f"no usable back end: {'; '.join(passed)}",
                          " or ".join(installs) if installs else "see resgraph doctor")


def open_session(artifact: str, backend: str = "auto", options: Options | None = None) -> Session:
    """Open a compiled folder (or the model.onnx inside one), or a plain ONNX file (runtime.foreign:
    a path, its preprocess from its metadata, or foreign.model_of's ForeignModel, from flags), on a
    back end; `session.why` says why that one.

    Where `auto` or an alias chose, a back end that probes usable but fails to open (onnxruntime-gpu
    lists its CUDA provider even when the CUDA or cuDNN libraries it needs are missing) is passed
    over for the next candidate, and the reason joins `why`."""
    from .foreign import ForeignModel, model_of
    artifact = model_of(artifact)
    foreign = isinstance(artifact, ForeignModel)
    folder = artifact if foreign else folder_of(artifact)
    manifest = artifact.manifest if foreign else read_manifest(folder)
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
        if options.verify and not foreign:   # a plain file has no record to check against: it was read just now
            verify_loaded(folder, manifest, name)
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


def named_backends(spec: str, folder: str, option: str = "--backend") -> tuple[list[str], list[dict]]:
    """The back ends a --backend(s) value names, and those passed over: 'all' is every usable one
    (ort-trt too, which auto leaves out; the others listed with why and what to install); otherwise a
    comma-separated list of names or aliases, each resolved by choose(). A back end named twice,
    directly or through an alias ('ort,ort-cpu' on a CPU machine), or an empty name, is an OptionError."""
    from ..errors import OptionError
    if spec == "all":
        from .foreign import FOREIGN_BACKENDS, ForeignModel
        names, skipped = [], []
        for name in FOREIGN_BACKENDS if isinstance(folder, ForeignModel) else BACKENDS:   # a plain ONNX file: ORT's
            a = probe(name, folder)
            if a.ok:
                names.append(name)
            else:
                skipped.append({"backend": name, "reason": a.reason, "install": a.install})
        if not names:
            choose("auto", folder)   # raises, naming what to install
        return names, skipped
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise OptionError.at(option, f"'{spec}' has an empty back end name", "e.g. ort-cpu,torch-cpu (or all)")
    chosen: dict[str, str] = {}
    for part in parts:
        name, _ = choose(part, folder)
        if name in chosen:
            said = f"'{part}' twice" if chosen[name] == part else f"'{chosen[name]}' and '{part}', both {name} here"
            raise OptionError.at(option, f"{option} names {said}", "give each back end once")
        chosen[name] = part
    return list(chosen), []
