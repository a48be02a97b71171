"""The GPU an engine is built for or opened on: its name and compute capability.

From CUDA (cuda-python's cudaGetDeviceProperties), which numbers GPUs as TensorRT and
cudaSetDevice do: CUDA_VISIBLE_DEVICES applied, fastest first by default. nvidia-smi numbers them
in PCI order and ignores CUDA_VISIBLE_DEVICES, so it is only the fallback where cuda-python is
missing, and then only where the two orders cannot differ (one GPU, no CUDA_VISIBLE_DEVICES).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from ...errors import BackendError


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str      # "9.0"


def gpu(index: int = 0) -> Gpu:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return _from_nvidia_smi(index)
    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError.at(f"GPU {index}", f"CUDA cannot query the GPU: {err.name}",
                              "is the NVIDIA driver installed and the GPU visible? (nvidia-smi; CUDA_VISIBLE_DEVICES)")
    name = props.name.decode(errors="replace").split("\0")[0] if isinstance(props.name, bytes) else str(props.name)
    return Gpu(index, name.strip(), f"{props.major}.{props.minor}")


def _from_nvidia_smi(index: int) -> Gpu:
    smi = shutil.which("nvidia-smi")
    out = None
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            out = None
    rows = [r.split(",") for r in out.stdout.strip().splitlines()] if out is not None and out.returncode == 0 else []
    if len(rows) == 1 and index == 0 and not os.environ.get("CUDA_VISIBLE_DEVICES") and len(rows[0]) == 2:
        name, cc = (x.strip() for x in rows[0])
        if cc.replace(".", "").isdigit():
            return Gpu(0, name, cc)
    raise BackendError.at(f"GPU {index}", "cannot tell this GPU's compute capability without cuda-python" +
                          ("" if rows else " (and nvidia-smi shows no GPU)"),
                          "pip install 'resgraph[tensorrt]' (it brings cuda-python), on a machine with the NVIDIA driver")


def select(index: int) -> None:
    """Make GPU `index` the current CUDA device of this thread (TensorRT builds and runs on it). Without
    cuda-python, GPU 0 (every thread's default) needs no call."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        if index == 0:
            return
        raise BackendError.at(f"GPU {index}", "selecting a GPU needs cuda-python",
                              "pip install 'resgraph[tensorrt]'") from None
    (err,) = cudart.cudaSetDevice(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError.at(f"GPU {index}", f"cannot select this GPU: {err.name}", "see nvidia-smi for the GPUs here")


def here(device_id: int = 0) -> dict:
    """This machine's TensorRT version and GPU, as far as they can be read (`engine info`'s `here`):
    {"tensorrt_version", "gpu", "compute_capability"}, with "why" where something cannot be read."""
    import importlib.util
    out: dict = {}
    if importlib.util.find_spec("tensorrt") is None:
        return {"why": "tensorrt is not installed"}
    try:
        import tensorrt as trt
        out["tensorrt_version"] = trt.__version__
    except Exception as e:  # noqa: BLE001  (a broken install: say so)
        return {"why": f"tensorrt does not import: {e}"}
    try:
        g = gpu(device_id)
    except BackendError as e:   # no GPU to query, no cuda-python
        return {**out, "why": e.message}
    return {**out, "gpu": g.name, "compute_capability": g.compute_capability}
