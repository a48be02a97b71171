"""TensorRT engines of int8 folders: the precision plan (strongly typed, no precision builder flag,
only from an int8 folder and only int8 from it), engine.json's record, the ONNX file each of the
TensorRT family reads (model.s8.onnx: Manifest.onnx_file), and the commands' refusals; what needs no
TensorRT runs everywhere. The last test builds and runs a real int8 engine where TensorRT, cuda-python
and a GPU exist (bench/gpu_check.sh runs this file there), skipped with the reason elsewhere.

The int8 folder here is made from the digits folder with resgraph.quant's calibrate and quantize (the
two encodings compile writes), on a few digits, without the accuracy gate: these tests are about the
engine path, not the quantisation."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import ROOT, run_cli
from resgraph.backends.tensorrt.engine_json import EngineInfo, TensorSpec, mismatches, read_engine_info, rebuild_command
from resgraph.backends.tensorrt.options import BatchProfile, BuildOptions, from_flags, typing_plan
from resgraph.backends.tensorrt.profile import resolve
from resgraph.errors import BackendError, OptionError
from resgraph.manifest import Artifact, Quantization, read_manifest, sha256_file, verify_artifacts, write_manifest
from test_tensorrt import _info as _engine_info
from test_tensorrt_gpu import _missing

VERSIONS = [(10, 0, 1), (10, 8), (10, 16), (11, 0), (11, 4)]    # the name checks' releases


# --- the precision plan ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_an_int8_folder_builds_a_strongly_typed_int8_network_on_every_version(version):
    p = typing_plan("int8", "int8", version, "--precision")
    # the Q/DQ types decide every layer: no INT8 or FP16 flag (a strongly typed network refuses them;
    # TensorRT 11 has neither), TF32 cleared so that the layers kept float compute in fp32
    assert (p.strongly_typed, p.set_flags, p.clear_flags) == (True, (), ("TF32",))


@pytest.mark.parametrize("onnx", ["fp32", "fp16"])
@pytest.mark.parametrize("version", [(10, 8), (11, 4)])
def test_int8_from_a_float_folder_is_refused_with_the_commands_that_make_an_int8_one(onnx, version):
    with pytest.raises(OptionError) as e:
        typing_plan("int8", onnx, version, "--precision")
    assert e.value.file == "--precision" and f"this folder is {onnx}" in e.value.message
    assert "resgraph quantize FOLDER --calibrate" in e.value.hint and "--precision int8" in e.value.hint


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_an_int8_folder_gives_no_float_engine(precision):
    with pytest.raises(OptionError) as e:
        typing_plan(precision, "int8", (10, 16), "compiled/x/model.s8.onnx")
    assert e.value.file == "compiled/x/model.s8.onnx" and f"cannot give a {precision} engine" in e.value.message
    assert "--precision int8" in e.value.hint


def test_build_options_take_int8_and_reproduce_it():
    o = BuildOptions(precision="int8", batch=BatchProfile(1, 256, 256))
    assert BuildOptions.from_json(json.loads(json.dumps(o.to_json()))) == o
    assert o.command_flags() == "--precision int8 --batch 1:256:256"
    assert from_flags("int8", "1:256:256", None, None, None, False, None, None) == o
    with pytest.raises(OptionError) as e:
        BuildOptions(precision="fp8")
    assert "int8" in e.value.hint


def _info(**kw) -> EngineInfo:
    """test_tensorrt's engine record, built int8 at batch 1:256:256."""
    return _engine_info(**{"options": BuildOptions(precision="int8", batch=BatchProfile(1, 256, 256)), **kw})


def test_engine_json_records_an_int8_engine(tmp_path):
    info = _info()
    d = json.loads(json.dumps(info.to_json()))
    assert d["precision"] == "int8" and d["strongly_typed"] is True and d["build"]["precision"] == "int8"
    assert EngineInfo.from_json(d, "engine.json") == info
    assert rebuild_command(str(tmp_path), info) == f"resgraph engine build {tmp_path} --precision int8 --batch 1:256:256"
    found = mismatches(info, "10.16.1.11", "9.0", "c" * 64, onnx_name="model.s8.onnx")
    assert [w for w, _ in found] == ["onnx"] and "built from another model.s8.onnx" in found[0][1]


# --- an int8 folder ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_folder(digits_folder, tmp_path_factory):
    """digits, quantised: model.onnx (u8) and model.s8.onnx (s8) from one calibration on the 40 samples,
    the manifest int8 with its quantization record; the float weights and spec kept (as compile keeps them)."""
    import onnx

    from resgraph.compile import load_weights
    from resgraph.frontend import check_file
    from resgraph.passes.inference import for_inference
    from resgraph.quant.calibrate import calibrate
    from resgraph.quant.qdq import quantize, tensors_to_calibrate
    folder = tmp_path_factory.mktemp("int8") / "digits-int8"
    shutil.copytree(digits_folder, folder)
    checked = check_file(str(folder / "spec.yaml"))
    graph, weights = for_inference(checked.graph, load_weights(str(folder / "weights.safetensors"), checked.graph).tensors)
    m = read_manifest(str(folder))
    x = _samples(folder, m)
    amax = calibrate(graph, weights, [x[i:i + 16] for i in range(0, len(x), 16)], tensors_to_calibrate(graph),
                     method="minmax")
    for name, encoding in (("model.onnx", "u8"), ("model.s8.onnx", "s8")):
        onnx.save(quantize(graph, weights, amax, encoding, opset=m.opset), str(folder / name))
    arts = {**m.artifacts, **{n: Artifact(sha256_file(str(folder / n)), os.path.getsize(folder / n))
                              for n in ("model.onnx", "model.s8.onnx")}}
    q = Quantization(method="minmax", percentile=None, samples=len(x), seed=0, calibration="examples/digits/samples",
                     calibration_sha256="0" * 64, state_bytes=0, keep_float=(), float_nodes=(),
                     models={"model.onnx": "u8", "model.s8.onnx": "s8"}, gate={}, cpu={})
    write_manifest(str(folder / "manifest.json"), replace(m, precision="int8", quantization=q, artifacts=arts))
    assert verify_artifacts(str(folder), read_manifest(str(folder))) == {}
    return folder


def _samples(folder, manifest) -> np.ndarray:
    """The shipped digit samples (40 PNGs) as the model takes them, through the folder's own preprocess."""
    import glob

    from resgraph.runtime.base import checked_preprocess
    pre = checked_preprocess(manifest, str(folder))
    return np.stack([pre.file(p) for p in sorted(glob.glob(str(ROOT / "examples" / "digits" / "samples" / "*.png")))])


def _plan(seen: list):
    """A plan builder that records the ONNX file it is given (TensorRT's is build_plan)."""
    def build(onnx_path, manifest, options, device_id, verbose):
        seen.append(onnx_path)
        name = os.path.basename(onnx_path)
        data = b"test plan for " + manifest.artifacts[name].sha256.encode()
        return data, _info(options=options, onnx_sha256=manifest.artifacts[name].sha256,
                           engine_sha256=hashlib.sha256(data).hexdigest(), engine_bytes=len(data),
                           inputs=(TensorSpec(manifest.input.name, (-1, *manifest.input.sample_shape), "float32"),),
                           outputs=(TensorSpec(manifest.output.name, (-1, *manifest.output.sample_shape), "float32"),),
                           profile=resolve(options, manifest.inputs, manifest.sizes))
    return build


def test_the_engine_of_an_int8_folder_is_built_from_model_s8_onnx(int8_folder, tmp_path):
    from resgraph.backends.tensorrt.build import build_engine
    folder = tmp_path / "q"
    shutil.copytree(int8_folder, folder)
    m = read_manifest(str(folder))
    assert (m.onnx_file(None), m.onnx_file("tensorrt"), m.onnx_file("ort-trt"), m.onnx_file("ort-cpu")) == \
        ("model.s8.onnx", "model.s8.onnx", "model.s8.onnx", "model.onnx")
    seen: list = []
    info = build_engine(str(folder), BuildOptions(precision="int8", batch=BatchProfile(1, 8, 16)), build=_plan(seen))
    assert [os.path.basename(p) for p in seen] == ["model.s8.onnx"]
    assert info.onnx_sha256 == sha256_file(str(folder / "model.s8.onnx")) != sha256_file(str(folder / "model.onnx"))
    d = json.loads((folder / "engine.json").read_text())
    assert d["precision"] == "int8" and read_engine_info(str(folder)) == info
    after = read_manifest(str(folder))
    assert set(after.artifacts) == set(m.artifacts) | {"model.engine", "engine.json"} and after.precision == "int8"
    assert verify_artifacts(str(folder), after) == {}


def test_engine_build_refuses_int8_from_a_float_folder_and_float_from_an_int8_one(digits_folder, int8_folder):
    """Decided before TensorRT is imported: the same answer with or without it, and nothing written."""
    before = sorted(os.listdir(digits_folder))
    r = run_cli("engine", "build", str(digits_folder), "--precision", "int8", "--batch", "1:8:16")
    assert r.returncode == 1 and "an int8 engine is built from an int8 folder" in r.stderr, r.stderr
    assert "resgraph quantize FOLDER --calibrate" in r.stderr and sorted(os.listdir(digits_folder)) == before
    r = run_cli("engine", "build", str(int8_folder), "--precision", "fp16")
    assert r.returncode == 1 and "this folder is int8" in r.stderr and "--precision int8" in r.stderr, r.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here: this checks the error without it")
def test_engine_build_of_an_int8_folder_without_tensorrt_says_so(int8_folder):
    r = run_cli("engine", "build", str(int8_folder), "--batch", "1:8:16")     # the folder's precision: int8
    assert r.returncode == 1 and "TensorRT is not installed" in r.stderr, r.stderr


def test_engine_info_shows_an_int8_engine_and_the_file_it_came_from(int8_folder, tmp_path):
    folder = tmp_path / "q"
    shutil.copytree(int8_folder, folder)
    (folder / "model.engine").write_bytes(b"plan")
    (folder / "engine.json").write_text(json.dumps(_info().to_json()))
    r = run_cli("engine", "info", str(folder))
    assert "TensorRT 10.16.1.11, int8 (strongly typed), batch 1:256:256" in r.stdout, r.stdout + r.stderr
    assert "from model.s8.onnx sha256 aaaa" in r.stdout


def test_ort_back_ends_read_their_encoding(int8_folder):
    """ort-cpu runs model.onnx (u8: ONNX Runtime's integer CPU kernels); ort-trt opens model.s8.onnx
    (int8, zero point 0: what TensorRT requires) in the provider's INT8 mode."""
    from resgraph.runtime import Options
    from resgraph.runtime.ort import OrtSession
    from resgraph.runtime.session import nvidia_gpu_visible
    m = read_manifest(str(int8_folder))
    cpu = OrtSession(str(int8_folder), m, Options(), cuda=False)
    assert os.path.basename(cpu.path) == "model.onnx" and cpu.precision == "int8"
    x = _samples(int8_folder, m)[:4]
    assert cpu.run(x).shape == (4, *m.output.sample_shape)
    assert cpu._trt_options()["trt_int8_enable"] is True
    if nvidia_gpu_visible():
        return
    with pytest.raises(BackendError) as e:     # no TensorRT provider here: refused, naming the file it opened
        OrtSession(str(int8_folder), m, Options(), cuda=False, tensorrt=True)
    assert e.value.file == str(int8_folder / "model.s8.onnx"), e.value.diagnostics


def test_a_float_folder_keeps_model_onnx_and_no_int8_mode(digits_folder):
    from resgraph.runtime import Options
    from resgraph.runtime.ort import OrtSession
    m = read_manifest(str(digits_folder))
    s = OrtSession(str(digits_folder), m, Options(), cuda=False)
    assert os.path.basename(s.path) == "model.onnx" and "trt_int8_enable" not in s._trt_options()


# --- built and run, where TensorRT and a GPU exist -------------------------------------------------------

@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_an_int8_engine_builds_strongly_typed_and_agrees_with_its_qdq_model(int8_folder, tmp_path):
    """A real int8 engine from model.s8.onnx: engine.json says int8, strongly typed; its outputs agree
    with the same Q/DQ model on ONNX Runtime's CPU provider (top-1 on the 40 samples, and within a few
    quantisation steps of the logits)."""
    import onnxruntime as ort

    from resgraph.backends.tensorrt.build import build_engine
    from resgraph.runtime import Options, open_session
    folder = tmp_path / "q"
    shutil.copytree(int8_folder, folder)
    m = read_manifest(str(folder))
    info = build_engine(str(folder), BuildOptions(precision="int8", batch=BatchProfile(1, 8, 40)))
    assert info.options.precision == "int8" and info.strongly_typed
    assert info.onnx_sha256 == sha256_file(str(folder / "model.s8.onnx"))
    x = _samples(folder, m)
    ref = ort.InferenceSession(str(folder / "model.s8.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {m.input.name: x})[0]
    with open_session(str(folder), "tensorrt", Options()) as s:
        assert s.precision == "int8"
        got = s.run(x)
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.95, agree
    assert float(np.abs(got - ref).max()) <= 0.1 * (1 + float(np.abs(ref).max())), np.abs(got - ref).max()
