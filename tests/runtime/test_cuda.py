"""The CUDA paths: the PyTorch module on a GPU agrees with ONNX Runtime on every shipped spec, in fp32 and
fp16, torch.compile on the GPU agrees with eager, and training with AMP (fp16 + GradScaler) learns and
resumes. Skipped, with the reason, where torch sees no CUDA device: CI has none, so these run wherever a
GPU is (`python -m pytest tests/runtime/test_cuda.py`)."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: these tests need a GPU")

import resgraph  # noqa: E402
from resgraph.backends.onnx import to_onnx  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402
from conftest import ROOT, SPECS, check_small, run_cli  # noqa: E402
from test_onnx_backend import fp32_noise, ort_run, random_weights  # noqa: E402


@pytest.fixture(autouse=True)
def strict_fp32():
    """TF32 would round every conv's inputs to 10 mantissa bits: ~1e-3, not the fp32 being tested."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_module(graph, weights, dtype=torch.float32):
    m = resgraph.to_torch(graph, init=False)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return m.to("cuda", dtype).eval()


@torch.no_grad()
def run_cuda(m, x, dtype=torch.float32):
    return m(torch.from_numpy(x).to("cuda", dtype)).float().cpu().numpy()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_cuda_module_matches_onnxruntime(path):
    """The parity test's bound (abs 1e-4, or 4x fp32's own noise floor), PyTorch on the GPU."""
    checked = check_small(path)
    w = random_weights(checked.graph)
    model = to_onnx(*for_inference(checked.graph, w))
    x = np.random.default_rng(0).standard_normal((7, *checked.graph.nodes[0].shape)).astype(np.float32)
    err = np.abs(run_cuda(cuda_module(checked.graph, w), x) - ort_run(model, x)).max()
    if err > 1e-4:
        noise = fp32_noise(checked.graph, w, x)
        assert err <= 4 * noise, f"CUDA differs from ONNX Runtime by {err:.2e}; fp32 noise floor {noise:.2e}"


@pytest.mark.parametrize("name", ["cifar_resnet20_b", "resnet18", "densenet121"])
def test_fp16_onnx_agrees_with_the_half_precision_cuda_module(name):
    """Both fp16 forms within the fp16 tolerance (2e-2 x (1 + |ref|)) of the fp32 result."""
    checked = resgraph.check(str(ROOT / "specs" / f"{name}.yaml"))
    w = random_weights(checked.graph)
    x = np.random.default_rng(1).standard_normal((4, *checked.graph.nodes[0].shape)).astype(np.float32)
    ref = run_cuda(cuda_module(checked.graph, w), x)
    half = run_cuda(cuda_module(checked.graph, w, torch.float16), x, torch.float16)
    onnx16 = ort_run(to_onnx(*for_inference(checked.graph, w), precision="fp16"), x)
    for got in (half, onnx16):
        assert np.all(np.abs(got - ref) <= 2e-2 * (1 + np.abs(ref)))
    assert (half.argmax(1) == ref.argmax(1)).mean() >= 0.75 and (onnx16.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_torch_compile_on_the_gpu_matches_eager():
    checked = resgraph.check(str(ROOT / "specs" / "cifar_resnet20_a.yaml"))
    m = cuda_module(checked.graph, random_weights(checked.graph))
    x = np.random.default_rng(2).standard_normal((8, 3, 32, 32)).astype(np.float32)
    eager = run_cuda(m, x)
    compiled = run_cuda(torch.compile(m), x)
    assert np.abs(compiled - eager).max() <= 1e-4


def test_amp_training_on_cuda_learns_resumes_and_compiles(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sklearn.datasets import load_digits
    run = tmp_path / "run"
    base = ["train", "specs/digits_resnet.yaml", "--data", "digits", "-o", str(run), "--device", "cuda"]
    p = run_cli(*base, "--epochs", "6", timeout=600)   # AMP is on by default on CUDA
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    p = run_cli(*base, "--epochs", "8", "--resume", timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    import csv
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9)) and float(rows[-1]["val_acc"]) > 0.9
    out = tmp_path / "compiled"
    p = run_cli("compile", "specs/digits_resnet.yaml", "--weights", str(run / "last.safetensors"), "-o", str(out))
    assert p.returncode == 0, p.stderr
    s = ort.InferenceSession(os.fspath(out / "model.onnx"), providers=["CPUExecutionProvider"])
    d = load_digits()
    x = ((d.images / 16.0 - 0.3) / 0.38).astype(np.float32)[:, None]
    assert (s.run(None, {"image": x})[0].argmax(1) == d.target).mean() > 0.9
