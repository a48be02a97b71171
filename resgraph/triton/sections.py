"""Pieces of a Triton model config (ModelConfig, text format) that several model folders of one
export share: the tensors, the version policy, the warm-up sample, the TensorRT accelerator of the
onnxruntime platform, and what one model folder of the repository holds (ModelFolder).

    version_policy   latest:K | all | specific:A,B       Triton's ModelVersionPolicy (default: latest 1)
    model_warmup     one sample of the model's own input shape and dtype, batch 1, zero or random
                     data; a size-variable input at its smallest valid sizes (the manifest's)
    optimization     execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" ... }] }:
                     the parameters of Triton's onnxruntime_backend README ("ONNX Runtime with
                     TensorRT optimization"): precision_mode, max_workspace_size_bytes,
                     trt_engine_cache_enable, trt_engine_cache_path
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import OptionError
from ..manifest import KSERVE

DTYPES = {k: f"TYPE_{v}" for k, v in KSERVE.items()}   # a manifest's dtype -> Triton's data_type
WARMUPS = ("zero", "random", "none")
POLICY_HINT = "latest:K (the K newest versions), all, or specific:A,B (those versions)"


@dataclass(frozen=True)
class Accelerator:
    """ONNX Runtime's TensorRT execution provider inside Triton's onnxruntime backend."""
    fp16: bool = False                 # precision_mode FP16 (else FP32; an int8 folder: INT8)
    workspace_mib: int | None = None   # max_workspace_size_bytes (default: the backend's, 1 GiB)
    cache: str | None = None           # trt_engine_cache_path (with trt_engine_cache_enable "1")


@dataclass
class ModelFolder:
    """One model folder of the repository as an export writes it: its name, its config's text, and
    its version folder's files {path inside the version: source} (linked or copied from a compiled
    folder; `package`: copied from resgraph's own files), its labels (labels.txt) where it has any."""
    name: str
    config: str
    files: dict = field(default_factory=dict)
    package: dict = field(default_factory=dict)
    labels: tuple = ()


def q(s: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def tensors(kind: str, items: list[str]) -> str:
    """`input [...]` or `output [...]`: on one line for one tensor, one a line for several."""
    if len(items) == 1:
        return f"{kind} [{items[0]}]"
    return f"{kind} [\n" + ",\n".join(f"  {x}" for x in items) + "\n]"


def dims_of(t) -> str:
    """A manifest tensor's dims without the batch, -1 where a size variable sets one."""
    return ", ".join("-1" if isinstance(d, str) else str(d) for d in t.sample_shape)


def parse_policy(text: str | None) -> tuple[str, tuple[int, ...]] | None:
    """--version-policy's text -> ("latest", (K,)) | ("all", ()) | ("specific", (A, B, ...)); None
    for none given (Triton's default: the newest version)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(latest|all|specific)\s*(?::\s*([0-9,\s]*))?", text)
    numbers = tuple(int(x) for x in (m[2] or "").split(",") if x.strip()) if m else ()
    ok = m is not None and (m[1] == "all" and m[2] is None or m[1] == "latest" and len(numbers) == 1
                            or m[1] == "specific" and len(numbers) >= 1)
    if not ok or any(n < 1 for n in numbers):
        shown = text.encode("unicode_escape").decode()[:80]
        raise OptionError.at("--version-policy", f"'{shown}' is not a version policy", POLICY_HINT)
    return m[1], tuple(sorted(set(numbers))) if m[1] == "specific" else numbers


def policy_text(policy: tuple[str, tuple[int, ...]] | None) -> list[str]:
    """The version_policy line of the config (none for the default)."""
    if policy is None:
        return []
    kind, numbers = policy
    if kind == "latest":
        return [f"version_policy: {{ latest: {{ num_versions: {numbers[0]} }} }}"]
    if kind == "all":
        return ["version_policy: { all: {} }"]
    return [f"version_policy: {{ specific: {{ versions: [{', '.join(map(str, numbers))}] }} }}"]


def check_policy(policy, versions: set[int]) -> None:
    """A specific policy naming a version the model folder will not hold after the export is refused:
    Triton would fail to load the model."""
    if policy is None or policy[0] != "specific":
        return
    missing = [n for n in policy[1] if n not in versions]
    if missing:
        have = ", ".join(map(str, sorted(versions)))
        raise OptionError.at("--version-policy", f"version{'s' * (len(missing) > 1)} "
                             f"{', '.join(map(str, missing))} would not exist (the model will hold {have})",
                             "name versions the model folder holds, or latest:K / all")


def warmup_text(m, how: str) -> list[str]:
    """model_warmup: one request of batch 1 with every input at its own dims and dtype (a size
    variable at its smallest valid size), zero or random data; none for `how` none."""
    if how not in WARMUPS:
        raise OptionError.at("--warmup", f"unknown warm-up '{how}'", " | ".join(WARMUPS))
    if how == "none":
        return []
    smallest = {k: r.valid[0] for k, r in m.sizes.items()}
    data = "zero_data: true" if how == "zero" else "random_data: true"
    inputs = " ".join(f"inputs {{ key: {q(t.name)} value: {{ data_type: {DTYPES[t.dtype]} "
                      f"dims: [{', '.join(map(str, t.at(smallest)))}] {data} }} }}" for t in m.inputs)
    return [f'model_warmup [{{ name: "resgraph {how} sample" batch_size: 1 count: 1 {inputs} }}]']


def accelerator_text(a: Accelerator | None, int8: bool) -> list[str]:
    """optimization { execution_accelerators { gpu_execution_accelerator [tensorrt] } } with the
    onnxruntime backend's parameter names; none without an accelerator."""
    if a is None:
        return []
    if a.workspace_mib is not None and a.workspace_mib < 1:
        raise OptionError.at("--accelerator-workspace", f"{a.workspace_mib} MiB", "one MiB or more")
    if int8 and a.fp16:
        raise OptionError.at("--accelerator-fp16", "an int8 folder runs in INT8 (its Q/DQ nodes set the precision)",
                             "leave out --accelerator-fp16")
    params = [("precision_mode", "INT8" if int8 else "FP16" if a.fp16 else "FP32")]
    if a.workspace_mib is not None:
        params.append(("max_workspace_size_bytes", str(a.workspace_mib << 20)))
    if a.cache is not None:
        if not a.cache or "\n" in a.cache or "\x00" in a.cache:
            raise OptionError.at("--accelerator-cache", "an empty path, or one with a newline or NUL",
                                 "a folder on the server's machine, e.g. /models/cache")
        params += [("trt_engine_cache_enable", "1"), ("trt_engine_cache_path", a.cache)]
    shown = " ".join(f"parameters {{ key: {q(k)} value: {q(v)} }}" for k, v in params)
    return [f'optimization {{ execution_accelerators {{ gpu_execution_accelerator: [{{ name: "tensorrt" {shown} }}] }} }}']
