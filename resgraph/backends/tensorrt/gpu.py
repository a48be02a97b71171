"""The GPU an engine is built for or opened on: its name and compute capability.

From `nvidia-smi --query-gpu=name,compute_cap` (the driver's tool, present wherever the driver is;
no CUDA library is loaded into this process), else from cuda-python's cudaGetDeviceProperties.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from ...errors import SpecError


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str      # "9.0"


def gpu(index: int = 0) -> Gpu:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.count(",") == 1:
            name, cc = (s.strip() for s in out.stdout.strip().split(","))
            if cc.replace(".", "").isdigit():
                return Gpu(index, name, cc)
    return _from_cuda_python(index)


def _from_cuda_python(index: int) -> Gpu:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise SpecError.at(f"GPU {index}", "cannot tell this GPU's compute capability: no nvidia-smi, no cuda-python",
                           "pip install 'resgraph[tensorrt]' (it brings cuda-python), on a machine with the NVIDIA "
                           "driver") from None
    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise SpecError.at(f"GPU {index}", f"CUDA cannot query the GPU: {err.name}",
                           "is the NVIDIA driver installed and the GPU visible? (nvidia-smi)")
    name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
    return Gpu(index, name, f"{props.major}.{props.minor}")


def select(index: int) -> None:
    """Make GPU `index` the current CUDA device of this thread (TensorRT builds and runs on it)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise SpecError.at(f"GPU {index}", "selecting a GPU needs cuda-python", "pip install 'resgraph[tensorrt]'") from None
    (err,) = cudart.cudaSetDevice(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise SpecError.at(f"GPU {index}", f"cannot select this GPU: {err.name}", "see nvidia-smi for the GPUs here")
