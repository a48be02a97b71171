"""The TensorRT path's parts that run without TensorRT: build options, the precision -> flags plan per
TensorRT version, engine.json and the compatibility check, the timing cache's place, publishing an
engine into a folder, and every user error of the commands on a machine without TensorRT or a GPU.
(The API names are checked in test_tensorrt_api.py; building and running engines in
test_tensorrt_gpu.py, where TensorRT and a GPU exist.)"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import run_cli
from resgraph.manifest import read_manifest, verify_artifacts
from resgraph.publish import wait_for_cleanup
from resgraph.backends.tensorrt.engine_json import (EngineInfo, TensorSpec, check_compatible, mismatches,
                                                    read_engine_info, rebuild_command)
from resgraph.backends.tensorrt.options import (BatchProfile, BuildOptions, default_timing_cache, typing_plan,
                                                version_tuple)
from resgraph.backends.tensorrt.profile import from_specs, resolve
from resgraph.errors import ArtifactError, BackendError, OptionError


# --- options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [("8", (8, 8, 8)), ("1:256", (1, 256, 256)), ("1:32:256", (1, 32, 256)),
                                        ("4:4:4", (4, 4, 4))])
def test_batch_profile_forms(text, want):
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == want
    assert BatchProfile.parse(str(p)) == p


@pytest.mark.parametrize("text", ["0:1:2", "8:4:16", "1:64:32", "a:b", "1:2:3:4", "", "-1", "1.5"])
def test_batch_profile_errors_name_the_option_and_the_form(text):
    with pytest.raises(OptionError) as e:
        BatchProfile.parse(text)
    assert e.value.file == "--batch" and "MIN" in (e.value.message + e.value.hint)


@pytest.mark.parametrize("kw, option", [({"precision": "fp8"}, "--precision"), ({"optimization_level": 6}, "--opt-level"),
                                        ({"workspace_mib": 0}, "--workspace"),
                                        ({"hardware_compatibility": "hopper"}, "--hardware-compatibility")])
def test_build_options_refuse_what_tensorrt_would(kw, option):
    with pytest.raises(OptionError) as e:
        BuildOptions(**kw)
    assert e.value.file == option


def test_build_options_round_trip_and_reproduce_their_command():
    o = BuildOptions(precision="fp16", batch=BatchProfile(2, 16, 64), workspace_mib=2048, optimization_level=5,
                     timing_cache="/tmp/t.cache", hardware_compatibility="ampere-plus", version_compatible=True)
    assert BuildOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    flags = o.command_flags()
    assert flags == ("--precision fp16 --batch 2:16:64 --workspace 2048 --opt-level 5 --hardware-compatibility "
                     "ampere-plus --version-compatible")
    # the flags, parsed as `engine build` parses them, give the same options (the timing cache is the machine's)
    from resgraph.backends.tensorrt.options import from_flags
    words = flags.split()
    kw = dict(zip([w[2:].replace("-", "_") for w in words[::2]], words[1::2]))
    got = from_flags(kw.get("precision"), kw.get("batch"), 2048, 5, "/tmp/t.cache", False, "ampere-plus", True)
    assert got == o


def test_version_tuple():
    assert version_tuple("10.16.1.11") == (10, 16, 1, 11)
    assert version_tuple("10.7.0.post1") == (10, 7, 0)
    assert version_tuple("11.4.0.106") > version_tuple("10.16.1.11") >= (10, 12)


@pytest.mark.parametrize("precision, onnx, version, strong, set_, clear", [
    ("fp32", "fp32", (10, 8), False, (), ("TF32",)),
    ("fp32", "fp32", (10, 16), True, (), ("TF32",)),
    ("fp32", "fp32", (11, 0), True, (), ("TF32",)),
    ("tf32", "fp32", (10, 16), True, ("TF32",), ()),
    ("fp16", "fp32", (10, 8), False, ("FP16",), ("TF32",)),     # older 10.x: the builder flag
    ("fp16", "fp16", (10, 8), False, ("FP16",), ("TF32",)),
    ("fp16", "fp16", (10, 12), True, (), ("TF32",)),             # strongly typed: the ONNX types decide
    ("fp16", "fp16", (11, 4), True, (), ("TF32",)),
    ("bf16", "fp32", (10, 16), False, ("BF16",), ("TF32",)),
])
def test_typing_plan(precision, onnx, version, strong, set_, clear):
    p = typing_plan(precision, onnx, version, "model.onnx")
    assert (p.strongly_typed, p.set_flags, p.clear_flags) == (strong, set_, clear)


@pytest.mark.parametrize("precision, onnx, version, says", [
    ("fp16", "fp32", (10, 12), "--precision fp16"),         # strongly typed fp16 needs the fp16 model.onnx
    ("fp16", "fp32", (11, 0), "--precision fp16"),
    ("fp32", "fp16", (10, 16), "recompile with --precision fp32"),
    ("bf16", "fp32", (11, 0), "TensorRT 10.x"),
])
def test_typing_plan_refuses_what_cannot_be_built_and_says_what_would_work(precision, onnx, version, says):
    with pytest.raises(OptionError) as e:
        typing_plan(precision, onnx, version, "compiled/x/model.onnx")
    assert e.value.file == "compiled/x/model.onnx" and says in e.value.hint + e.value.message


def test_default_timing_cache_is_per_version_and_gpu_under_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("RESGRAPH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache("10.16.1.11", "9.0", "NVIDIA H200") == str(tmp_path / "resgraph" / "tensorrt" /
                                                                            "timing-trt10.16.1.11-sm90-nvidia-h200.cache")
    monkeypatch.setenv("RESGRAPH_CACHE_DIR", str(tmp_path / "c"))
    assert default_timing_cache("11.4.0.106", "8.6", "NVIDIA A10").startswith(str(tmp_path / "c" / "tensorrt"))


# --- engine.json and compatibility -------------------------------------------------------------

def _info(**kw) -> EngineInfo:
    d = dict(tensorrt_version="10.16.1.11", gpu_name="NVIDIA H200", compute_capability="9.0",
             options=BuildOptions(precision="fp16", batch=BatchProfile(1, 32, 256)), strongly_typed=True,
             inputs=(TensorSpec("input", (-1, 3, 224, 224), "float32"),),
             outputs=(TensorSpec("logits", (-1, 1000), "float32"),), onnx_sha256="a" * 64, engine_sha256="b" * 64,
             engine_bytes=51_000_000, build_seconds=41.5, built_at="2026-12-01T01:00:00+00:00", resgraph_version="0.2.0")
    d.update(kw)
    d.setdefault("profile", from_specs(d["inputs"], d["options"].batch))   # the recorded shapes at the batch profile
    return EngineInfo(**d)


def test_engine_json_round_trips():
    info = _info()
    d = json.loads(json.dumps(info.to_json()))
    assert EngineInfo.from_json(d, "engine.json") == info
    assert d["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert d["profile"] == {"batch": [1, 32, 256], "inputs": [{"name": "input", "min": [1, 3, 224, 224],
                                                               "opt": [32, 3, 224, 224], "max": [256, 3, 224, 224]}]}
    assert set(d) >= {"tensorrt_version", "precision", "build", "inputs", "outputs", "onnx_sha256", "build_seconds",
                      "built_at", "engine_bytes"}


def test_each_of_the_three_mismatches_is_named():
    info = _info()
    assert mismatches(info, "10.16.1.11", "9.0", "a" * 64) == []
    assert [w for w, _ in mismatches(info, "10.13.3.9", "9.0", "a" * 64)] == ["tensorrt"]
    assert [w for w, _ in mismatches(info, "10.16.1.11", "8.6", "a" * 64)] == ["gpu"]
    assert [w for w, _ in mismatches(info, "10.16.1.11", "9.0", "c" * 64)] == ["onnx"]
    assert [w for w, _ in mismatches(info, "11.0.0.114", "8.9", "c" * 64)] == ["tensorrt", "gpu", "onnx"]


def test_version_and_hardware_compatible_engines_run_where_tensorrt_says_they_do():
    vc = _info(options=BuildOptions(version_compatible=True, hardware_compatibility="ampere-plus"))
    assert mismatches(vc, "10.16.1.11", "8.0", "a" * 64) == []     # any GPU from Ampere on
    assert mismatches(vc, "10.17.0.1", "12.0", "a" * 64) == []     # a later 10.x
    assert [w for w, _ in mismatches(vc, "10.13.0.35", "9.0", "a" * 64)] == ["tensorrt"]   # not an earlier one
    assert mismatches(vc, "11.0.0.114", "9.0", "a" * 64) == []     # 10 -> 11: TensorRT's support matrix says so
    assert [w for w, _ in mismatches(vc, "12.0.0.1", "9.0", "a" * 64)] == ["tensorrt"]     # no other major
    assert [w for w, _ in mismatches(vc, "10.16.1.11", "7.5", "a" * 64)] == ["gpu"]        # Turing is not Ampere+


def test_a_plan_without_hardware_compatibility_runs_only_on_the_gpu_model_it_was_built_on():
    plain = _info()                                                 # built on an H200, 9.0
    assert mismatches(plain, "10.16.1.11", "9.0", "a" * 64, "NVIDIA H200") == []
    found = mismatches(plain, "10.16.1.11", "9.0", "a" * 64, "NVIDIA H100 80GB HBM3")
    assert [w for w, _ in found] == ["gpu"] and "same-compute-capability" in found[0][1]
    same_cc = _info(options=BuildOptions(hardware_compatibility="same-compute-capability"))
    assert mismatches(same_cc, "10.16.1.11", "9.0", "a" * 64, "NVIDIA H100 80GB HBM3") == []
    assert [w for w, _ in mismatches(same_cc, "10.16.1.11", "8.9", "a" * 64, "NVIDIA L4")] == ["gpu"]


# TensorRT's rule per hardware compatibility level (include/NvInfer.h, HardwareCompatibilityLevel):
# kNONE, the GPU architecture it was built on; kSAME_COMPUTE_CAPABILITY, GPUs of "the same Compute
# Capability" (major.minor: 8.6 and 8.9 are two); kAMPERE_PLUS, "Ampere and newer" (8.0 and above, 8.6
# and 8.9 alike). Every other-GPU case above differs in the major; these differ in the minor only.
@pytest.mark.parametrize("level, built, here, runs", [
    ("none", ("8.6", "NVIDIA A10"), ("8.9", "NVIDIA L4"), False),
    ("none", ("8.9", "NVIDIA L4"), ("8.6", "NVIDIA A10"), False),
    ("same-compute-capability", ("8.6", "NVIDIA A10"), ("8.9", "NVIDIA L4"), False),
    ("same-compute-capability", ("8.9", "NVIDIA L4"), ("8.6", "NVIDIA A10"), False),
    ("same-compute-capability", ("8.6", "NVIDIA A10"), ("8.6", "NVIDIA GeForce RTX 3090"), True),
    ("ampere-plus", ("8.6", "NVIDIA A10"), ("8.9", "NVIDIA L4"), True),
    ("ampere-plus", ("8.9", "NVIDIA L4"), ("8.6", "NVIDIA A10"), True),
])
def test_compute_capabilities_that_differ_in_the_minor_only(level, built, here, runs):
    info = _info(compute_capability=built[0], gpu_name=built[1],
                 options=BuildOptions(precision="fp16", hardware_compatibility=level))
    found = mismatches(info, "10.16.1.11", here[0], "a" * 64, here[1])
    assert [w for w, _ in found] == ([] if runs else ["gpu"]), found
    if not runs:
        assert f"compute capability {built[0]} ({built[1]}), this GPU is {here[0]} ({here[1]})" in found[0][1]


def test_a_mismatch_says_what_differs_and_the_command_that_rebuilds(tmp_path):
    info = _info()
    with pytest.raises(ArtifactError) as e:   # EngineMismatch
        check_compatible(str(tmp_path), info, "10.16.1.11", "8.6", "a" * 64)
    assert e.value.differs == ("gpu",)
    assert "compute capability 9.0 (NVIDIA H200), this GPU is 8.6" in e.value.message
    assert rebuild_command(str(tmp_path), info) in e.value.hint and "--rebuild" in e.value.hint
    assert rebuild_command(str(tmp_path), info) == f"resgraph engine build {tmp_path} --precision fp16 --batch 1:32:256"


def test_engine_json_problems_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="no model.engine"):
        read_engine_info(str(tmp_path))
    (tmp_path / "model.engine").write_bytes(b"plan")
    with pytest.raises(ArtifactError, match="no engine.json beside it"):
        read_engine_info(str(tmp_path))
    (tmp_path / "engine.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable engine.json"):
        read_engine_info(str(tmp_path))
    (tmp_path / "engine.json").write_text(json.dumps({**_info().to_json(), "format": 3}))
    with pytest.raises(ArtifactError, match="format 3"):
        read_engine_info(str(tmp_path))
    d = _info().to_json()
    del d["gpu"]
    (tmp_path / "engine.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="damaged engine.json"):
        read_engine_info(str(tmp_path))


# --- publishing an engine into a compiled folder -------------------------------------------------
# The plan below is made by the test, not by TensorRT: these tests are about the folder (atomic
# republishing, the manifest, the gate), which the GPU tests then exercise with real engines.

def _plan(onnx_path, manifest, options, device_id, verbose):
    import hashlib
    data = b"test plan for " + manifest.artifacts["model.onnx"].sha256.encode()
    return data, _info(options=options, onnx_sha256=manifest.artifacts["model.onnx"].sha256,
                       engine_sha256=hashlib.sha256(data).hexdigest(), engine_bytes=len(data),
                       inputs=(TensorSpec(manifest.input.name, (-1, *manifest.input.sample_shape), "float32"),),
                       outputs=(TensorSpec(manifest.output.name, (-1, *manifest.output.sample_shape), "float32"),),
                       profile=resolve(options, manifest.inputs, manifest.sizes))


def test_engine_build_republishes_the_folder_with_the_engine_listed(digits_folder, tmp_path):
    from resgraph.backends.tensorrt.build import build_engine
    folder = tmp_path / "digits"
    shutil.copytree(digits_folder, folder)
    before = read_manifest(str(folder))
    onnx_inode = os.stat(folder / "model.onnx").st_ino
    info = build_engine(str(folder), BuildOptions(batch=BatchProfile(1, 8, 16)), build=_plan)
    after = read_manifest(str(folder))
    assert set(after.artifacts) == set(before.artifacts) | {"model.engine", "engine.json"}
    assert verify_artifacts(str(folder), after) == {}          # every sha256 the manifest lists holds
    assert read_engine_info(str(folder)) == info
    assert os.stat(folder / "model.onnx").st_ino == onnx_inode  # hard-linked into the new set, not copied
    wait_for_cleanup()                                          # the replaced set is deleted in the background
    assert sorted(os.listdir(tmp_path)) == ["digits"]           # no staging folder left beside it
    # rebuilding replaces the engine; a gate that refuses leaves the folder exactly as it was
    listing = {p: (folder / p).read_bytes() for p in os.listdir(folder)}

    def refuse(staged):
        assert os.path.isfile(os.path.join(staged, "model.engine"))
        raise ArtifactError.at("gate", "refused", "test")
    with pytest.raises(ArtifactError, match="refused"):
        build_engine(str(folder), BuildOptions(precision="tf32"), gate=refuse, build=_plan)
    assert {p: (folder / p).read_bytes() for p in os.listdir(folder)} == listing
    wait_for_cleanup()
    assert sorted(os.listdir(tmp_path)) == ["digits"]


# --- the commands on a machine without TensorRT -------------------------------------------------

needs_no_tensorrt = pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                                       reason="tensorrt is installed here: these check the errors without it")


@needs_no_tensorrt
def test_compile_engine_without_tensorrt_fails_first_and_writes_nothing(tmp_path):
    r = run_cli("compile", "specs/digits_resnet.yaml", "--engine", "-o", str(tmp_path / "out"))
    assert r.returncode == 1
    assert "TensorRT is not installed" in r.stderr and "pip install 'resgraph[tensorrt]'" in r.stderr
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, says", [
    (["--precision", "bf16"], "bf16 is an engine precision: it needs --engine"),
    (["--precision", "tf32"], "tf32 is an engine precision"),
    (["--batch", "1:8"], "--batch: error: an engine option without --engine"),
    (["--no-parity-gate"], "--no-parity-gate: error: an engine option without --engine"),
    (["--engine", "--batch", "9:1"], "--batch: error: '9:1'"),
    (["--engine", "--timing-cache", "x", "--no-timing-cache"], "--timing-cache and --no-timing-cache together"),
])
def test_compile_engine_option_errors(tmp_path, args, says):
    r = run_cli("compile", "specs/digits_resnet.yaml", "-o", str(tmp_path / "out"), *args)
    assert r.returncode == 1, r.stderr
    assert says in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "out").exists()


@needs_no_tensorrt
def test_engine_build_without_tensorrt_leaves_the_folder_alone(digits_folder, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(digits_folder, folder)
    before = sorted(os.listdir(folder))
    r = run_cli("engine", "build", str(folder), "--batch", "1:8:16")
    assert r.returncode == 1 and "TensorRT is not installed" in r.stderr
    assert sorted(os.listdir(folder)) == before and sorted(os.listdir(tmp_path)) == ["d"]


def test_engine_info_and_run_on_a_folder_without_an_engine(digits_folder):
    r = run_cli("engine", "info", str(digits_folder))
    assert r.returncode == 1 and "no model.engine" in r.stderr and f"resgraph engine build {digits_folder}" in r.stderr
    r = run_cli("run", str(digits_folder), "examples/digits/samples", "--backend", "tensorrt")
    assert r.returncode == 1 and "the tensorrt back end is not usable here" in r.stderr


@needs_no_tensorrt
def test_engine_info_reads_engine_json_and_says_it_cannot_tell_here(digits_folder, tmp_path):
    folder = tmp_path / "d"
    shutil.copytree(digits_folder, folder)
    (folder / "model.engine").write_bytes(b"plan")
    (folder / "engine.json").write_text(json.dumps(_info().to_json()))
    r = run_cli("engine", "info", str(folder))
    assert r.returncode == 0, r.stderr
    assert "TensorRT 10.16.1.11, fp16 (strongly typed), batch 1:32:256, NVIDIA H200 (sm 9.0)" in r.stdout
    assert "here: cannot tell (tensorrt is not installed)" in r.stdout
    d = json.loads(run_cli("engine", "info", str(folder), "--json").stdout)
    assert d["here"]["runs"] is None and d["here"]["rebuild"] == f"resgraph engine build {folder} --precision fp16 --batch 1:32:256"


def test_backends_tensorrt_and_ort_trt_report_why_they_are_unusable(digits_folder):
    from resgraph.runtime import BACKENDS
    from resgraph.runtime.session import nvidia_gpu_visible
    if nvidia_gpu_visible():
        pytest.skip("a GPU is visible here")
    for name in ("tensorrt", "ort-trt"):
        a = BACKENDS[name].probe(str(digits_folder))
        assert not a.ok and a.reason
    r = run_cli("doctor", "--json")
    d = json.loads(r.stdout)
    assert {b["name"] for b in d["backends"]} >= {"tensorrt", "ort-trt"} and "cuda-python" in d["packages"]


def test_cuda_calls_fail_as_user_errors_without_a_gpu():
    """Real cuda-python on a machine without a GPU: its calls return an error code, which the back end
    reports by call and name (not a traceback, not a None pointer used later)."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from resgraph.runtime import cuda
    from resgraph.runtime.session import nvidia_gpu_visible
    if nvidia_gpu_visible():
        pytest.skip("a GPU is visible here")
    with pytest.raises(BackendError) as e:
        cuda.PinnedBuffer((2, 3))
    assert e.value.file == "cudaMallocHost" and "CUDA error cuda" in e.value.message
    from resgraph.backends.tensorrt.gpu import gpu
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(BackendError) as e:
            gpu(0)
        assert "CUDA cannot query the GPU" in e.value.message and "nvidia-smi" in e.value.hint


def test_the_gate_without_torch_holds_fp32_to_a_relative_bound():
    """No fp64 reference without torch: an fp32 engine against ONNX Runtime is judged relative to the
    output's size (large logits differ by more than 1e-4 between correct kernels)."""
    import numpy as np

    from resgraph.runtime.parity import compare
    ref = np.array([[120.0, -80.0, 3.0]], np.float32)
    near = ref + np.array([[5e-3, -4e-3, 1e-4]], np.float32)     # 4e-5 of 1 + |ref|
    far = ref + np.array([[5e-2, 0, 0]], np.float32)            # 4e-4 of it
    fp32 = {"ort-cpu": "fp32", "tensorrt": "fp32"}
    assert not compare({"ort-cpu": ref, "tensorrt": near}, fp32)[0].ok          # parity's rule without a floor
    assert compare({"ort-cpu": ref, "tensorrt": near}, fp32, fp32_rel=1e-4)[0].ok
    assert not compare({"ort-cpu": ref, "tensorrt": far}, fp32, fp32_rel=1e-4)[0].ok


def test_ort_trt_refuses_a_tensorrt_its_provider_cannot_load():
    """TensorRT 11 needs onnxruntime-gpu >= 1.27 (NVIDIA's 10 -> 11 notes); no TensorRT at all: its
    provider has no libraries to load. Decided from the versions, before any session."""
    from resgraph.runtime.session import ort_trt_problem
    assert ort_trt_problem("1.26.0", "11.1.0.4") == ("TensorRT 11.1.0.4 needs onnxruntime-gpu 1.27 or later for its "
                                                    "TensorRT provider; this is 1.26.0")
    assert ort_trt_problem("1.27.0", "11.1.0.4") is None
    assert ort_trt_problem("1.20.1", "10.16.0.72") is None
    assert "tensorrt is not installed" in ort_trt_problem("1.31.0", None)
