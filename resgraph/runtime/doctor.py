"""`resgraph doctor`: what this machine can run, and what to install for what it cannot.

Versions come from the installed distributions' metadata (nothing imported to read them); torch and
onnxruntime are imported only where installed, to ask for their CUDA and execution providers (and
tensorrt, to see that its libraries load); the
GPUs come from nvidia-smi (the driver's own tool), or from torch where nvidia-smi is absent. "cpu":
the CPU's integer dot-product support (runtime.cpu.describe(): what an int8 folder's model.onnx runs
on; an int8 folder records its gate's, and run/bench warn on a weaker one).
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import shutil
import subprocess
import sys

PACKAGES = ("numpy", "pillow", "onnx", "onnxruntime", "onnxruntime-gpu", "safetensors", "torch", "torchvision", "timm",
            "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "cuda-bindings")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _gpus() -> tuple[str | None, list[dict]]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap,driver_version",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
            rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]
            if out.returncode == 0 and rows:
                return rows[0][3], [{"index": i, "name": r[0], "memory_mib": int(float(r[1])), "compute_capability": r[2]}
                                    for i, r in enumerate(rows)]
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            pass
    return None, []


def report() -> dict:
    from ..version import __version__
    from . import cpu
    from .session import BACKENDS
    r: dict = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "cpu": cpu.describe(),
        "resgraph": __version__,
        "packages": {p: _version(p) for p in PACKAGES},
    }
    driver, gpus = _gpus()
    r["nvidia"] = {"driver": driver, "gpus": gpus}
    if r["packages"]["torch"]:
        try:
            import torch
            t = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
            if t["cuda_available"]:
                t["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                if not gpus:
                    gpus[:] = [{"index": i, "name": p.name, "memory_mib": p.total_memory // 2**20,
                                "compute_capability": f"{p.major}.{p.minor}"}
                               for i, p in ((i, torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count()))]
            r["torch"] = t
        except Exception as e:  # noqa: BLE001  (a broken install is a finding, not a crash)
            r["torch"] = {"error": f"{type(e).__name__}: {e}"}
    if r["packages"]["onnxruntime"] or r["packages"]["onnxruntime-gpu"]:
        try:
            import onnxruntime as ort
            r["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
        except Exception as e:  # noqa: BLE001
            r["onnxruntime"] = {"error": f"{type(e).__name__}: {e}"}
    if importlib.util.find_spec("tensorrt") is not None:   # installed: does it load (its libraries)?
        try:
            import tensorrt as trt
            r["tensorrt"] = {"version": trt.__version__}
        except Exception as e:  # noqa: BLE001
            r["tensorrt"] = {"error": f"{type(e).__name__}: {e}"}
    r["warnings"] = []
    if r["packages"]["onnxruntime"] and r["packages"]["onnxruntime-gpu"]:
        r["warnings"].append("onnxruntime and onnxruntime-gpu are both installed: they share one module and the last "
                             "one installed wins; keep one: pip uninstall -y onnxruntime onnxruntime-gpu && "
                             "pip install 'resgraph[gpu]' (or '[onnx]' on a CPU machine)")
    r["backends"] = []
    for name in BACKENDS:
        a = BACKENDS[name].probe(None)
        r["backends"].append({"name": name, "usable": a.ok, "reason": a.reason, "install": a.install})
    return r
