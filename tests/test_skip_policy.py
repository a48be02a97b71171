"""The skip policy (tests/skip_policy.py) as a run sees it: a pytest of its own on tests/skip_probe.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from skip_policy import category


def probe(reason: str, at: str = "test", **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "RESGRAPH_REQUIRE_GPU")}
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests/skip_probe.py"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**clean, "PROBE_REASON": reason, "PROBE_AT": at, **env})


@pytest.mark.parametrize("at", ["test", "module"])
def test_under_ci_only_a_missing_gpu_or_tensorrt_may_skip(at):
    r = probe("onnxruntime is not installed", at, CI="true")
    assert r.returncode == 1 and "under CI a test may skip only for want of a GPU or TensorRT" in r.stdout, r.stdout
    assert "onnxruntime is not installed" in r.stdout
    for allowed in ("no NVIDIA GPU visible", "tensorrt is not installed (pip install 'resgraph[tensorrt]')"):
        r = probe(allowed, at, CI="true")
        assert passed(r) and "SKIPPED" in r.stdout, r.stdout
    assert passed(probe("onnxruntime is not installed", at))   # outside CI a skip is a skip


@pytest.mark.parametrize("at", ["test", "module"])
def test_require_gpu_turns_a_gpu_or_tensorrt_skip_into_a_failure(at):
    for reason in ("torch sees no CUDA device", "tensorrt is not installed"):
        r = probe(reason, at, RESGRAPH_REQUIRE_GPU="1")
        assert r.returncode == 1 and "RESGRAPH_REQUIRE_GPU=1: this GPU test must run here" in r.stdout, r.stdout
    assert passed(probe("tensorrt is not installed", at, RESGRAPH_REQUIRE_GPU="cuda"))
    assert probe("no NVIDIA GPU visible", at, RESGRAPH_REQUIRE_GPU="cuda").returncode == 1
    assert passed(probe("a GPU is visible here", at, RESGRAPH_REQUIRE_GPU="1", CI="true"))


def passed(r: subprocess.CompletedProcess) -> bool:
    """pytest's exit: 0, or 5 where the probe module skipped whole (nothing collected)."""
    return r.returncode in (0, 5)


def test_every_gpu_skip_reason_of_the_suite_falls_in_a_category():
    """The reasons the GPU and TensorRT tests give, as written in them: a reworded one would fall off the
    allow-list and fail CI, or escape RESGRAPH_REQUIRE_GPU."""
    from test_runtime_cuda import _ort_cuda, _torch_cuda  # noqa: F401  (their reasons on this machine)
    for reason in ("no CUDA device: these tests need a GPU", "torch sees no CUDA device", "no NVIDIA GPU visible",
                   "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu: the [gpu] extra)",
                   "tensorrt is not installed (pip install 'resgraph[tensorrt]'; see docs/tensorrt.md)"):
        assert category(reason) in ("gpu", "tensorrt"), reason
    for reason in (_torch_cuda(), _ort_cuda()):
        assert reason is None or category(reason) == "gpu", reason
