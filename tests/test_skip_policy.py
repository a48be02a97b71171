"""The skip policy (tests/skip_policy.py) as a run sees it: a pytest of its own on tests/skip_probe.py,
one run per environment, each reason a test of its own."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT
from skip_policy import category

GPU, TRT, OTHER = "no NVIDIA GPU visible", "tensorrt is not installed (pip install 'resgraph[tensorrt]')", \
    "onnxruntime is not installed"
OPPOSITE = "a GPU is visible here"


def run_probe(reasons: list[str], at: str, more: list[str], env: dict) -> subprocess.CompletedProcess:
    """tests/skip_probe.py in a pytest of its own (none of this run's addopts, CI or RESGRAPH_REQUIRE_GPU)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "RESGRAPH_REQUIRE_GPU")}
    return subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-rA", "-p", "no:cacheprovider", *more,
                           "tests/skip_probe.py"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**clean, "PROBE_REASONS": "|".join(reasons), "PROBE_AT": at, **env})


def probe(reasons: list[str], at: str = "test", **env) -> tuple[int, dict[int, str]]:
    """(pytest's exit status, {reason's index: 'skipped' or the failure's text})."""
    r = run_probe(reasons, at, ["-vv"], env)
    seen = {int(k): "skipped" if how == "SKIPPED" else r.stdout
            for k, how in re.findall(r"test_probe\[(\d+)\] (SKIPPED|FAILED)", r.stdout)}
    return r.returncode, seen


def test_under_ci_only_a_missing_gpu_or_tensorrt_may_skip():
    code, seen = probe([GPU, TRT, OTHER, OPPOSITE], CI="true")
    assert code == 1 and [seen[k] == "skipped" for k in range(4)] == [True, True, False, True], seen
    assert "under CI a test may skip only for want of a GPU or TensorRT" in seen[2] and OTHER in seen[2]
    code, seen = probe([GPU, TRT, OTHER])                       # outside CI a skip is a skip
    assert code == 0 and set(seen.values()) == {"skipped"} and len(seen) == 3


def test_require_gpu_turns_a_gpu_or_tensorrt_skip_into_a_failure():
    code, seen = probe([GPU, TRT, OPPOSITE], RESGRAPH_REQUIRE_GPU="1")
    assert code == 1 and [seen[k] == "skipped" for k in range(3)] == [False, False, True], seen
    assert "RESGRAPH_REQUIRE_GPU=1: this GPU test must run here, it skipped: no NVIDIA GPU" in seen[0]
    code, seen = probe([GPU, TRT], RESGRAPH_REQUIRE_GPU="cuda")  # a GPU machine known to lack TensorRT
    assert code == 1 and seen[0] != "skipped" and seen[1] == "skipped", seen


def test_a_module_that_skips_whole_fails_the_run_at_its_end_naming_it():
    """Also where xdist's workers collect (the suite's own way to run: addopts -n): the controller hears
    of the refused skip from the worker."""
    xdist = ["-n", "1"] if __import__("importlib").util.find_spec("xdist") else []
    for env, says, more in (({"CI": "true"}, "under CI a test may skip only", xdist),
                            ({"RESGRAPH_REQUIRE_GPU": "1"}, "RESGRAPH_REQUIRE_GPU=1", [])):
        r = run_probe([OTHER if "CI" in env else GPU], "module", more, env)
        assert r.returncode == 1 and "FAILED (a module skipped) tests/skip_probe.py" in r.stdout and says in r.stdout, \
            r.stdout


def test_every_gpu_skip_reason_of_the_suite_falls_in_a_category():
    """The reasons the GPU and TensorRT tests give, as written in them: a reworded one would fall off the
    allow-list and fail CI, or escape RESGRAPH_REQUIRE_GPU."""
    from test_runtime_cuda import _ort_cuda, _torch_cuda
    for reason in ("no CUDA device: these tests need a GPU", "torch sees no CUDA device", "no NVIDIA GPU visible",
                   "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu: the [gpu] extra)",
                   "tensorrt is not installed (pip install 'resgraph[tensorrt]'; see docs/tensorrt.md)"):
        assert category(reason) in ("gpu", "tensorrt"), reason
    for reason in (_torch_cuda(), _ort_cuda()):
        assert reason is None or category(reason) == "gpu", reason
