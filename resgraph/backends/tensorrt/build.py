"""model.onnx + Manifest -> model.engine + engine.json, with TensorRT's Python API.

The ONNX file is the manifest's for the builder (Manifest.onnx_file(None)): model.onnx, or an int8
folder's model.s8.onnx (Q/DQ with int8 zero points, which TensorRT requires), built strongly typed.

    log     = logger(): a trt.ILogger that keeps errors for the message (warnings shown with --verbose)
    builder = trt.Builder(log)
    network = builder.create_network(1 << STRONGLY_TYPED  if the precision plan is strongly typed else 0)
    parser  = trt.OnnxParser(network, log); parser.parse_from_file(model.onnx)   (resolves model.onnx.data;
              an int8 folder: model.s8.onnx)
    config  = builder.create_builder_config(): precision flags (options.typing_plan), workspace pool
              limit, builder_optimization_level, hardware compatibility level, VERSION_COMPATIBLE,
              one optimisation profile (batch MIN:OPT:MAX, every other dimension as the spec fixes it),
              the timing cache
    plan    = builder.build_serialized_network(network, config)   -> written as is (no header)

The timing cache (kernel timings, keyed by TensorRT version and GPU) is read before the build and
merged back after it under an exclusive lock, then written to a temporary file renamed over the old
one: concurrent builds add to it, and a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ...manifest import Artifact, Manifest, folder_of, read_manifest, write_manifest

from ...publish import Stage
from ...errors import ArtifactError, BackendError, OptionError, PathError
from ...fileio import link_or_copy
from .engine_json import EngineInfo, TensorSpec, write_engine_info
from .gpu import gpu as this_gpu
from .gpu import select
from .options import BuildOptions, default_timing_cache, int8_plan, typing_plan, version_tuple
from .profile import ShapeProfile, resolve

if TYPE_CHECKING:   # the annotations' names; imported for real, lazily, by import_tensorrt()
    import tensorrt as trt

INSTALL = "pip install 'resgraph[tensorrt]' on a machine with an NVIDIA GPU (see docs/tensorrt.md)"
# numpy's names for the TensorRT data types an engine's I/O may have
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
          "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def import_tensorrt():
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        raise BackendError.at("tensorrt", f"TensorRT is not installed ({e})", INSTALL) from None
    except Exception as e:  # noqa: BLE001  (installed, but its libraries do not load: libnvinfer, CUDA)
        raise BackendError.at("tensorrt", f"TensorRT is installed but does not load: {type(e).__name__}: {e}",
                              "check that the tensorrt wheels match the CUDA driver (tensorrt-cu12 or -cu13) and see "
                           "resgraph doctor") from None
    return trt


def logger(trt, verbose: bool):
    class Logger(trt.ILogger):
        """Keeps TensorRT's errors for the message; prints its warnings only when asked."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: "trt.ILogger.Severity", msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if verbose and severity != trt.ILogger.Severity.VERBOSE:
                import sys
                print(f"[TensorRT] {severity.name}: {msg}", file=sys.stderr)
    return Logger()


def parser_failures(parser: "trt.OnnxParser", onnx_path: str) -> str:
    """Each ONNX parser error as `node NAME (OpType): message`; where the parser does not name the
    node it reports its index, and the name and op type are read from model.onnx."""
    nodes = None
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name, op, index = err.node_name(), err.node_operator(), err.node()
        if (not name or not op) and index >= 0:
            if nodes is None:
                import onnx
                nodes = onnx.load(onnx_path, load_external_data=False).graph.node
            if index < len(nodes):
                name, op = name or nodes[index].name, op or nodes[index].op_type
        where = f"node {name} ({op})" if name or op else "the model"
        lines.append(f"{where}: {err.desc()} [{err.code().name}]")
    return "; ".join(lines) or "the parser gave no reason"


def build_plan(onnx_path: str, manifest: Manifest, options: BuildOptions, device_id: int = 0,
               verbose: bool = False) -> tuple[bytes, EngineInfo]:
    """Build the serialised engine (a plain TensorRT plan) from `onnx_path` (the manifest's
    onnx_file(None), model.onnx or model.s8.onnx) and its engine.json record."""
    trt = import_tensorrt()
    trt_version = version_tuple(trt.__version__)
    where = onnx_path
    onnx_name = os.path.basename(onnx_path)
    assert onnx_name == manifest.onnx_file(None), (onnx_name, manifest.onnx_file(None))
    plan = typing_plan(options.precision, manifest.precision, trt_version, where)
    card = this_gpu(device_id)
    need = {"ampere-plus": ((8, 0), "Ampere"), "same-compute-capability": ((7, 5), "Turing")}.get(
        options.hardware_compatibility)
    if need and version_tuple(card.compute_capability) < need[0]:
        raise OptionError.at("--hardware-compatibility", f"{options.hardware_compatibility} engines are built on "
                             f"{need[1]} or later GPUs; this one is {card.name} ({card.compute_capability})",
                             "build on a newer GPU, or without --hardware-compatibility")
    select(device_id)      # per thread (cudaSetDevice): every build selects its device, 0 included
    started = time.perf_counter()
    log = logger(trt, verbose)
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(onnx_path):
        raise ArtifactError.at(where, f"TensorRT's ONNX parser refused the model: {parser_failures(parser, onnx_path)}",
                               "check `resgraph doctor` for the TensorRT version; an op TensorRT lacks needs another "
                               "opset (--opset) or another back end")

    config = builder.create_builder_config()
    _set_flags(trt, config, options, plan, trt_version)
    profile = resolve(options, manifest.inputs, manifest.sizes)
    _set_profile(builder, network, config, profile, where)
    cache_path = _cache_path(options, trt.__version__, card)
    if cache_path:
        _use_timing_cache(config, cache_path, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError.at(where, "TensorRT could not build the engine: " + ("; ".join(log.errors[-5:]) or
                               "no reason given"), _build_hint(options))
    data = bytes(serialized)
    seconds = time.perf_counter() - started
    if cache_path:
        _save_timing_cache(config, cache_path)

    from ...version import __version__
    info = EngineInfo(
        tensorrt_version=trt.__version__, gpu_name=card.name, compute_capability=card.compute_capability,
        options=replace(options, timing_cache=cache_path or ""), strongly_typed=plan.strongly_typed,
        inputs=_specs([network.get_input(i) for i in range(network.num_inputs)]),
        outputs=_specs([network.get_output(i) for i in range(network.num_outputs)]), profile=profile,
        onnx_sha256=manifest.artifacts[onnx_name].sha256, engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_bytes=len(data), build_seconds=round(seconds, 3),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), resgraph_version=__version__)
    return data, info


def _set_flags(trt, config: "trt.IBuilderConfig", options: BuildOptions, plan, trt_version: tuple) -> None:
    """The builder flags and settings of the options and the precision's typing plan."""
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    if "TF32" in plan.set_flags:
        config.set_flag(trt.BuilderFlag.TF32)
    if "TF32" in plan.clear_flags:
        config.clear_flag(trt.BuilderFlag.TF32)    # on by default in TensorRT
    if trt_version < (11,):    # FP16 and BF16 flags exist up to 10.x (deprecated from 10.12, removed in 11)
        if "FP16" in plan.set_flags:
            config.set_flag(trt.BuilderFlag.FP16)
        if "BF16" in plan.set_flags:
            config.set_flag(trt.BuilderFlag.BF16)
    if options.hardware_compatibility == "ampere-plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif options.hardware_compatibility == "same-compute-capability":
        level = getattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None)   # from TensorRT 10.9
        if level is None:
            raise OptionError.at("--hardware-compatibility", f"TensorRT {trt.__version__} has no "
                                 "same-compute-capability level", "use ampere-plus, or TensorRT 10.9 or later")
        config.hardware_compatibility_level = level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def _set_profile(builder: "trt.Builder", network: "trt.INetworkDefinition", config: "trt.IBuilderConfig",
                 shapes: tuple[ShapeProfile, ...], where: str) -> None:
    """One optimisation profile: every network input (by name) from its MIN to its MAX shape, tuned
    for OPT. The network's inputs are the ONNX file's (`where`), which must be the manifest's."""
    by_name = {p.name: p for p in shapes}
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(by_name):
        raise ArtifactError.at(where, f"{os.path.basename(where)}'s inputs are {', '.join(names)}, the manifest's "
                               f"{', '.join(by_name)}: the two are not from one compile",
                               "recompile: resgraph compile SPEC --weights W -o FOLDER")
    profile = builder.create_optimization_profile()
    try:
        for name in names:
            p = by_name[name]
            profile.set_shape(name, p.min, p.opt, p.max)     # RuntimeError: shapes TensorRT finds inconsistent
        ok = config.add_optimization_profile(profile) >= 0    # -1: an invalid profile
    except RuntimeError as e:
        ok, why = False, str(e)
    else:
        why = "no reason given"
    if not ok:
        raise OptionError.at("--shapes", f"TensorRT refused the optimisation profile {','.join(map(str, shapes))}: "
                             f"{why}", "rerun with --verbose for TensorRT's log")


def _use_timing_cache(config: "trt.IBuilderConfig", cache_path: str, log) -> None:
    """Build with the timing cache at `cache_path`. One that TensorRT cannot read (create_timing_cache
    returns None for a corrupt or foreign file) or that was timed on another GPU or TensorRT is set
    aside as `<path>.bad` (kept for a look, no longer read): the build starts an empty cache, which
    replaces it after."""
    cache = config.create_timing_cache(_read(cache_path))
    if cache is not None and config.set_timing_cache(cache, False):   # ignore_mismatch=False: another device's
        return
    why = "is not a timing cache TensorRT can read" if cache is None else "was made on another GPU or TensorRT"
    _warn(f"timing cache {cache_path} {why}: building without it (set aside as {cache_path}.bad), and replacing "
          "it after")
    log.errors.clear()
    config.set_timing_cache(config.create_timing_cache(b""), False)
    with contextlib.suppress(OSError):
        os.replace(cache_path, cache_path + ".bad")


def _specs(tensors: "list[trt.ITensor]") -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t.name, tuple(int(d) for d in t.shape), DTYPES.get(t.dtype.name, t.dtype.name.lower()))
                 for t in tensors)


def _build_hint(options: BuildOptions) -> str:
    hint = "rerun with --verbose for TensorRT's log"
    if options.workspace_mib is not None:
        hint += f"; a larger --workspace than {options.workspace_mib} MiB may let more tactics run"
    return hint + f"; a smaller --batch than {options.batch}, or smaller MAX shapes (--shapes), need less memory"


def _cache_path(options: BuildOptions, trt_version: str, card) -> str | None:
    if options.timing_cache == "":
        return None
    return options.timing_cache or default_timing_cache(trt_version, card.compute_capability, card.name)


def _warn(message: str) -> None:
    import sys
    print(f"resgraph: warning: {message}", file=sys.stderr)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise PathError.at(path, f"cannot read the timing cache: {e.strerror}", "pass --timing-cache PATH, or "
                           "--no-timing-cache") from None


@contextlib.contextmanager
def _locked(path: str):
    import fcntl
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_timing_cache(config: "trt.IBuilderConfig", path: str) -> None:
    """Merge this build's timings into the cache on disk (another build may have added to it since
    it was read) and replace the file atomically. Never raises: the engine is built, and a cache that
    cannot be saved costs time at the next build, not this engine."""
    try:
        ours = config.get_timing_cache()
        with _locked(path):
            merged = config.create_timing_cache(_read(path))   # None: unreadable meanwhile
            if merged is None or not merged.combine(ours, False):   # or another device's: ours alone
                merged = ours
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".timing-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(bytes(merged.serialize()))
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except Exception as e:  # noqa: BLE001  (TensorRT's own errors too: the engine is built, keep it)
        _warn(f"timing cache {path} not saved: {type(e).__name__}: {e}")


# --- into a compiled folder ----------------------------------------------------------------------

def add_engine(stage: Stage, manifest: Manifest, options: BuildOptions, device_id: int = 0,
               verbose: bool = False, build=build_plan) -> tuple[Manifest, EngineInfo]:
    """Build from the staged ONNX file the builder reads (model.onnx; an int8 folder's model.s8.onnx);
    stage model.engine and engine.json; the manifest listing them. `build` makes the plan (build_plan:
    TensorRT; the publishing tests pass their own)."""
    data, info = build(os.path.join(stage.path, manifest.onnx_file(None)), manifest, options, device_id, verbose)
    with open(stage.file("model.engine"), "wb") as f:
        f.write(data)
    write_engine_info(stage.file("engine.json"), info)
    from ...manifest import sha256_file
    arts = dict(manifest.artifacts)
    arts["model.engine"] = Artifact(info.engine_sha256, info.engine_bytes)
    arts["engine.json"] = Artifact(sha256_file(stage.file("engine.json")), os.path.getsize(stage.file("engine.json")))
    return replace(manifest, artifacts=arts), info


def build_engine(folder: str, options: BuildOptions, device_id: int = 0, gate=None, verbose: bool = False,
                 build=build_plan) -> EngineInfo:
    """`resgraph engine build`: add (or replace) model.engine + engine.json in a compiled folder.

    The folder is republished whole, as compile does: its other artifacts are hard-linked into a
    staging folder (no copy), the engine and the updated manifest are written there, `gate(staged
    folder)` may refuse it (parity), and the set then takes the folder's place atomically."""
    manifest = read_manifest(folder)
    if manifest.onnx_file(None) not in manifest.artifacts:
        raise ArtifactError.at(folder, f"the manifest lists no {manifest.onnx_file(None)}",
                               "recompile: resgraph compile SPEC -o FOLDER")
    stage = Stage(folder)
    try:
        for name in (*manifest.artifacts, "spec.yaml"):
            if name in ("model.engine", "engine.json") or name in stage.names:
                continue
            src = os.path.join(folder, name)
            if not os.path.isfile(src):
                raise ArtifactError.at(src, "missing from the compiled folder", "recompile: resgraph compile SPEC -o FOLDER")
            link_or_copy(src, stage.file(name))
        new, info = add_engine(stage, manifest, options, device_id, verbose, build)
        write_manifest(stage.file("manifest.json"), new)
        if gate is not None:
            gate(stage.path)
        stage.publish()
    finally:
        stage.close()
    return info


def plan_build(artifact: str, precision: str | None, flags: dict) -> tuple[str, Manifest, BuildOptions]:
    """`resgraph engine build`'s options, before any work: (the folder, its manifest, the options).
    Flags not given come from the engine being replaced (a damaged engine.json: the defaults), the
    precision from it or else the folder's (an int8 folder: int8); TensorRT must be present and the
    precision buildable from the folder's ONNX file on its version."""
    from .engine_json import read_engine_info
    from .options import from_flags
    folder = folder_of(artifact)
    manifest = read_manifest(folder)
    base = None
    if "model.engine" in manifest.artifacts:
        try:
            base = read_engine_info(folder).options
        except Exception:  # noqa: BLE001  (a damaged engine.json: build from the defaults)
            base = None
    options = from_flags(precision or (None if base else manifest.precision), base=base, **flags)
    resolve(options, manifest.inputs, manifest.sizes)     # a profile the model cannot take: refused before any work
    if "int8" in (options.precision, manifest.precision):    # int8 and the folder: decided without TensorRT
        int8_plan(options.precision, manifest.precision, "--precision")
    typing_plan(options.precision, manifest.precision, version_tuple(import_tensorrt().__version__), "--precision")
    return folder, manifest, options
