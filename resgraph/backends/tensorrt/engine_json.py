"""engine.json: what model.engine is, and whether it can run here. Pure: no TensorRT import.

A TensorRT plan runs only on the TensorRT version that built it (a version-compatible one: on that
version or a later one of the same major, and 10 -> 11) and on the GPU model it was built on (a
same-compute-capability one: any GPU of that capability; an ampere-plus one: any of 8.0 or above). Deserialising a mismatched plan fails deep inside
TensorRT with a serialization error, or worse; so the runtime checks engine.json first and says
which of the three differs (TensorRT, GPU, model.onnx) and the command that rebuilds the engine.
model.engine itself is a plain plan, as `trtexec --saveEngine` writes: trtexec, Polygraphy and
Triton load it as is.

engine.json records the optimisation profile the plan was built for, every input's MIN, OPT and MAX
shapes (profile.py); the runtime checks it against the model when it opens the engine and refuses a
request outside it. Format 1 (before per-input profiles) is still read: its profile is the recorded
shapes at the batch profile.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ...errors import ArtifactError, OptionError
from .options import BuildOptions, version_tuple
from .profile import ShapeProfile, from_specs

FORMAT = 2      # 2: "profile" holds "inputs", every input's MIN, OPT and MAX shapes


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]          # -1 for the batch dimension and size variables
    dtype: str                      # numpy's name: float32, float16, ...


@dataclass(frozen=True)
class EngineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str         # "9.0"
    options: BuildOptions
    strongly_typed: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profile: tuple[ShapeProfile, ...]   # every input's, in the engine's input order
    onnx_sha256: str                # of the ONNX file it was built from (model.onnx; int8: model.s8.onnx)
    engine_sha256: str
    engine_bytes: int
    build_seconds: float
    built_at: str                   # ISO 8601, UTC
    resgraph_version: str
    format: int = FORMAT

    def to_json(self) -> dict:
        tensors = lambda ts: [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]  # noqa: E731
        return {"format": self.format, "resgraph_version": self.resgraph_version,
                "tensorrt_version": self.tensorrt_version,
                "gpu": {"name": self.gpu_name, "compute_capability": self.compute_capability},
                "precision": self.options.precision, "strongly_typed": self.strongly_typed,
                "profile": {"batch": [self.options.batch.min, self.options.batch.opt, self.options.batch.max],
                            "inputs": [p.to_json() for p in self.profile]},
                "build": self.options.to_json(),
                "inputs": tensors(self.inputs), "outputs": tensors(self.outputs),
                "onnx_sha256": self.onnx_sha256, "engine_sha256": self.engine_sha256, "engine_bytes": self.engine_bytes,
                "build_seconds": self.build_seconds, "built_at": self.built_at}

    @classmethod
    def from_json(cls, d: dict, where: str) -> "EngineInfo":
        fmt = d.get("format") if isinstance(d, dict) else None
        if fmt not in (1, FORMAT) or isinstance(fmt, bool):
            raise ArtifactError.at(where, f"engine.json format {fmt!r}, this resgraph reads formats 1 and {FORMAT}",
                                   "rebuild the engine: resgraph engine build FOLDER")
        try:
            tensors = lambda ts: tuple(TensorSpec(str(t["name"]), tuple(int(x) for x in t["shape"]), str(t["dtype"]))  # noqa: E731
                                       for t in ts)
            options, inputs = BuildOptions.from_json(d["build"]), tensors(d["inputs"])
            profile = tuple(ShapeProfile.from_json(p) for p in d["profile"]["inputs"]) if fmt >= 2 else \
                from_specs(inputs, options.batch)
            if any((p.min[0], p.opt[0], p.max[0]) != (options.batch.min, options.batch.opt, options.batch.max)
                   for p in profile):
                raise ValueError(f"its profile's batch is not the batch profile {options.batch}")
            return cls(tensorrt_version=str(d["tensorrt_version"]), gpu_name=str(d["gpu"]["name"]),
                       compute_capability=str(d["gpu"]["compute_capability"]), options=options,
                       strongly_typed=bool(d["strongly_typed"]), inputs=inputs, outputs=tensors(d["outputs"]),
                       profile=profile, onnx_sha256=str(d["onnx_sha256"]),
                       engine_sha256=str(d["engine_sha256"]), engine_bytes=int(d["engine_bytes"]),
                       build_seconds=float(d["build_seconds"]), built_at=str(d["built_at"]),
                       resgraph_version=str(d["resgraph_version"]), format=FORMAT)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError.at(where, f"a damaged engine.json: {type(e).__name__}: {e}",
                                   "rebuild the engine: resgraph engine build FOLDER") from None
        except OptionError as e:   # build options no build would have recorded (an unknown precision...)
            raise ArtifactError.at(where, f"a damaged engine.json: its build options: {e.message}",
                                   "rebuild the engine: resgraph engine build FOLDER") from None


def read_engine_info(folder: str) -> EngineInfo:
    path = os.path.join(folder, "engine.json")
    if not os.path.isfile(os.path.join(folder, "model.engine")):
        raise ArtifactError.at(folder, "no model.engine in the compiled folder",
                               f"build one: resgraph engine build {folder} (or compile with --engine)")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ArtifactError.at(path, "model.engine has no engine.json beside it (not built by resgraph?)",
                               f"rebuild it: resgraph engine build {folder}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError.at(path, f"unreadable engine.json: {e}", f"rebuild it: resgraph engine build {folder}") from None
    return EngineInfo.from_json(d, path)


def write_engine_info(path: str, info: EngineInfo) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f, indent=2)
        f.write("\n")


class EngineMismatch(ArtifactError):
    """model.engine cannot run here; `differs` names what: tensorrt | gpu | onnx."""

    differs: tuple[str, ...] = ()


def rebuild_command(folder: str, info: EngineInfo) -> str:
    return f"resgraph engine build {folder} {info.options.command_flags()}"


# a version-compatible plan runs on later TensorRT of its major, and across these majors (TensorRT's
# support matrix: "TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and
# TensorRT 8 ... with a TensorRT 10 runtime. No other combination across major versions")
CROSS_MAJOR = {(8, 9), (8, 10), (10, 11)}


def mismatches(info: EngineInfo, tensorrt_version: str, compute_capability: str, onnx_sha256: str,
               gpu_name: str | None = None, onnx_name: str = "model.onnx") -> list[tuple[str, str]]:
    """(what, why) for each of TensorRT version, GPU and the ONNX file it was built from (`onnx_name`:
    Manifest.onnx_file("tensorrt")) that keeps the engine from running here.

    TensorRT: the same version; a version-compatible plan, that version or later of the same major
    (or 8 -> 9/10, 10 -> 11). GPU: hardware compatibility `none` supports the plan only on the GPU
    model it was built on (same compute capability and name: TensorRT warns that another model of
    the same capability may be slower or fail); `same-compute-capability` on any GPU of that
    capability; `ampere-plus` on any of 8.0 or above."""
    out = []
    built, here = version_tuple(info.tensorrt_version), version_tuple(tensorrt_version)
    if info.options.version_compatible:
        if not (here >= built and (here[:1] == built[:1] or (built[0], here[0]) in CROSS_MAJOR)):
            out.append(("tensorrt", f"built by TensorRT {info.tensorrt_version} (version compatible: runs on later "
                                    f"{built[0]}.x), this is TensorRT {tensorrt_version}"))
    elif here != built:
        out.append(("tensorrt", f"built by TensorRT {info.tensorrt_version}, this is TensorRT {tensorrt_version}"))
    cc_built, cc_here = version_tuple(info.compute_capability), version_tuple(compute_capability)
    level = info.options.hardware_compatibility
    if level == "ampere-plus":
        if cc_here < (8, 0):
            out.append(("gpu", f"built for GPUs of compute capability 8.0 and above (ampere-plus), this GPU is "
                               f"{compute_capability}"))
    elif cc_here != cc_built:
        out.append(("gpu", f"built for compute capability {info.compute_capability} ({info.gpu_name}), this GPU is "
                           f"{compute_capability}" + (f" ({gpu_name})" if gpu_name else "")))
    elif level == "none" and gpu_name is not None and gpu_name.strip() != info.gpu_name.strip():
        out.append(("gpu", f"built on {info.gpu_name}, this GPU is {gpu_name} (the same compute capability "
                           f"{compute_capability}, another model: build with --hardware-compatibility "
                           "same-compute-capability to run on both)"))
    if onnx_sha256 != info.onnx_sha256:
        out.append(("onnx", f"built from another {onnx_name} (sha256 {info.onnx_sha256[:12]}, the folder's is "
                            f"{onnx_sha256[:12]}): the folder was recompiled after the engine was built"))
    return out


def check_compatible(folder: str, info: EngineInfo, tensorrt_version: str, compute_capability: str,
                     onnx_sha256: str, gpu_name: str | None = None, onnx_name: str = "model.onnx") -> None:
    """Raise EngineMismatch, before anything deserialises the plan, if it cannot run here."""
    found = mismatches(info, tensorrt_version, compute_capability, onnx_sha256, gpu_name, onnx_name)
    if found:
        e = EngineMismatch.at(os.path.join(folder, "model.engine"),
                              "model.engine cannot run here: " + "; ".join(why for _, why in found),
                              f"rebuild it from {onnx_name}: {rebuild_command(folder, info)}  (or pass --rebuild)")
        e.differs = tuple(what for what, _ in found)
        raise e


def io_mismatches(info: EngineInfo, manifest) -> list[tuple[str, str]]:
    """(tensor, why) for each way the engine's recorded I/O and profile do not fit the folder's model:
    every input and output by name, float32, of the manifest's rank and fixed dims, and a profile
    (profile.mismatches) the model can take."""
    from .profile import mismatches as profile_mismatches
    out = []
    for kind, got, want in (("inputs", info.inputs, manifest.inputs), ("outputs", info.outputs, manifest.outputs)):
        names, wanted = [t.name for t in got], [t.name for t in want]
        if sorted(names) != sorted(wanted):
            out.append((kind, f"the engine's {kind} are {', '.join(names)}, the manifest's {', '.join(wanted)}"))
            continue
        by_name = {t.name: t for t in got}
        for t in want:
            e = by_name[t.name]
            if e.dtype != "float32" or len(e.shape) != len(t.shape) or any(
                    isinstance(m, int) and g != m for g, m in zip(e.shape[1:], t.shape[1:])):
                out.append((t.name, f"{t.name} is {list(e.shape)} {e.dtype} in the engine, {list(t.shape)} float32 "
                                    "in the manifest"))
    return out or profile_mismatches(info.profile, manifest.inputs, manifest.sizes)


def check_io(folder: str, info: EngineInfo, manifest) -> None:
    """Raise EngineMismatch, at engine.json, where io_mismatches finds anything."""
    found = io_mismatches(info, manifest)
    if found:
        raise EngineMismatch.at(os.path.join(folder, "engine.json"), "the engine does not fit the folder's model: "
                                + "; ".join(why for _, why in found), f"rebuild it: {rebuild_command(folder, info)}  "
                                "(or pass --rebuild)")


def engine_report(artifact: str, device_id: int = 0) -> tuple[dict, EngineInfo, str]:
    """`resgraph engine info`: (engine.json with a `here` section saying whether it runs on this
    machine, what differs and the command that rebuilds it; the record; the folder). `here.runs` is
    None where this machine's TensorRT or GPU cannot be read."""
    from ...manifest import folder_of, read_manifest
    from .gpu import here as this_machine
    folder = folder_of(artifact)
    manifest = read_manifest(folder)
    info = read_engine_info(folder)
    here = this_machine(device_id)
    found = None
    onnx = manifest.onnx_file("tensorrt")
    if here.get("tensorrt_version") and here.get("compute_capability"):
        found = mismatches(info, here["tensorrt_version"], here["compute_capability"],
                           manifest.artifacts[onnx].sha256 if onnx in manifest.artifacts else "", here.get("gpu"), onnx)
    report = {**info.to_json(), "here": {**here, "runs": None if found is None else not found,
                                          "mismatches": [{"what": w, "why": y} for w, y in found or []],
                                          "rebuild": rebuild_command(folder, info)}}
    return report, info, folder
