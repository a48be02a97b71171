"""The runtime's GPU paths: ONNX Runtime's CUDA provider (I/O binding, CUDA graphs) and the torch
module on CUDA (autocast, channels-last, CUDA graphs), each against ONNX Runtime on the CPU.
They run unchanged on a machine with an NVIDIA GPU and skip, with the reason, elsewhere."""
import json

import numpy as np
import pytest

from conftest import run_cli
from resgraph.runtime import Options, choose, open_session
from resgraph.runtime.bench import bench


def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def _ort_cuda() -> str | None:
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu: the [gpu] extra)"
    from resgraph.runtime.session import nvidia_gpu_visible
    return None if nvidia_gpu_visible() else "no NVIDIA GPU visible"


needs_torch_cuda = pytest.mark.skipif(_torch_cuda() is not None, reason=str(_torch_cuda()))
needs_ort_cuda = pytest.mark.skipif(_ort_cuda() is not None, reason=str(_ort_cuda()))


def batches(folder, sizes=(1, 7, 32), rounds: int = 1):
    """Fresh random batches every time: a CUDA graph replayed on stale input would still match a
    repeated one."""
    rng = np.random.default_rng(0)
    shape = open_session(str(folder), "ort-cpu").input_shape
    return [rng.standard_normal((n, *shape)).astype(np.float32) for _ in range(rounds) for n in sizes]


@needs_ort_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_equals_the_cpu_provider(digits_folder, cuda_graph):
    cpu = open_session(str(digits_folder), "ort-cpu")
    with open_session(str(digits_folder), "ort-cuda", Options(cuda_graph=cuda_graph)) as gpu:
        assert gpu.device == "cuda:0"
        for x in batches(digits_folder, rounds=2):    # each batch size twice: a replayed graph too
            assert np.abs(gpu.run(x) - cpu.run(x)).max() <= 1e-4
            h2d, d2h = gpu.last_io
            assert h2d >= 0 and d2h >= 0


@needs_torch_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_torch_cuda_equals_onnxruntime(digits_folder, cuda_graph):
    cpu = open_session(str(digits_folder), "ort-cpu")      # TF32 is off unless asked for: fp32 is fp32
    with open_session(str(digits_folder), "torch-cuda", Options(cuda_graph=cuda_graph, amp="off")) as gpu:
        assert gpu.channels_last and gpu.precision == "fp32"
        for x in batches(digits_folder, rounds=2):
            assert np.abs(gpu.run(x) - cpu.run(x)).max() <= 1e-4


@needs_torch_cuda
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_torch_cuda_autocast_within_the_half_precision_tolerance(digits_folder, amp):
    cpu = open_session(str(digits_folder), "ort-cpu")
    with open_session(str(digits_folder), "torch-cuda", Options(amp=amp)) as gpu:
        assert gpu.precision == amp
        for x in batches(digits_folder):
            ref = cpu.run(x)
            tol = 2e-2 if amp == "fp16" else 8e-2        # bf16 keeps 8 mantissa bits to fp16's 11
            assert np.all(np.abs(gpu.run(x) - ref) <= tol * (1 + np.abs(ref)))


@needs_torch_cuda
def test_tf32_when_asked_is_reported_and_judged_as_such(digits_folder):
    cpu = open_session(str(digits_folder), "ort-cpu")
    with open_session(str(digits_folder), "torch-cuda", Options(tf32=True)) as gpu:
        assert gpu.precision == "tf32"
        for x in batches(digits_folder):
            ref = cpu.run(x)
            assert np.all(np.abs(gpu.run(x) - ref) <= 2e-2 * (1 + np.abs(ref)))
    with open_session(str(digits_folder), "torch-cuda") as gpu:   # and back off for the next session
        import torch
        assert gpu.precision == "fp32" and not torch.backends.cudnn.allow_tf32


@needs_torch_cuda
def test_auto_prefers_a_gpu_back_end(digits_folder):
    name, why = choose("auto", str(digits_folder))
    assert name in ("ort-cuda", "torch-cuda"), why


@needs_torch_cuda
def test_bench_reports_copies_on_the_gpu(digits_folder):
    with open_session(str(digits_folder), "torch-cuda") as s:
        r = bench(s, 8, duration=0.2, warmup=0.1)
    assert r.h2d_ms is not None and r.d2h_ms is not None and r.device == "cuda:0"
    p = run_cli("bench", str(digits_folder), "--backend", "all", "--batch", "1", "--duration", "0.1", "--json")
    names = [x["backend"] for x in json.loads(p.stdout)["results"]]
    assert "torch-cuda" in names and "ort-cpu" in names


@needs_torch_cuda
def test_parity_on_every_usable_back_end(digits_folder):
    p = run_cli("parity", str(digits_folder), "--json")
    r = json.loads(p.stdout)
    assert p.returncode == 0 and r["ok"] and len(r["backends"]) >= 3, p.stdout
