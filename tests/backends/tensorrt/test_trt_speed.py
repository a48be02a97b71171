"""bench/trt_speed.py's raw baseline checks every bool TensorRT returns: a refused shape or enqueue stops
the benchmark with the reason instead of timing nothing (which showed as an enormous img/s)."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import ROOT


def _trt_speed():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("trt_speed", ROOT / "bench" / "trt_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_refused_call_stops_the_benchmark_with_the_reason():
    ts = _trt_speed()
    ts._checked(True, "the input shape")
    with pytest.raises(SystemExit, match="TensorRT refused the input shape"):
        ts._checked(False, "the input shape")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="tensorrt is not installed (pip install 'resgraph[tensorrt]'; see docs/tensorrt.md)")
def test_raw_refuses_a_batch_beyond_the_engines_profile(tmp_path):
    """On a GPU with TensorRT: within the profile the figures are real; beyond it, set_input_shape
    returns False and the benchmark says so."""
    from conftest import run_cli
    from resgraph.runtime.base import nvidia_gpu_visible
    if not nvidia_gpu_visible():
        pytest.skip("no NVIDIA GPU visible")
    out = tmp_path / "d"
    r = run_cli("compile", "specs/digits_resnet.yaml", "--weights", "specs/weights/digits_resnet.safetensors",
                "-o", str(out), "--engine", "--batch", "1:4:8", timeout=900)
    assert r.returncode == 0, r.stderr
    ts = _trt_speed()
    figures = ts.raw(str(out), 8, 0.2)
    assert all(0 < v < 1e7 for v in figures.values()), figures
    with pytest.raises(SystemExit, match="refused the input shape"):
        ts.raw(str(out), 64, 0.2)
