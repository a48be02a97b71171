"""The runtime with an int8 folder (issue 23 item 4, item 2's warning): parity judges int8 pairs by the
accuracy gate's top-1 agreement and SQNR (not 1e-4), and the engine gate by the same rule; ort-trt's
sha256 check reads the file it loads (model.s8.onnx); run and bench warn on a CPU weaker than the
gate's; bench measures int8; doctor reports the CPU's integer dot product; export triton serves the
u8 model.onnx.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from conftest import ROOT, run_cli

from resgraph.errors import ArtifactError
from resgraph.manifest import read_manifest


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
    """The shipped digits ResNet compiled in int8, calibrated on digits (the gate: agreement and SQNR)."""
    out = tmp_path_factory.mktemp("int8") / "d8"
    r = run_cli("compile", str(ROOT / "specs" / "digits_resnet.yaml"), "--weights",
                str(ROOT / "specs" / "weights" / "digits_resnet.safetensors"), "--precision", "int8",
                "--calibrate", "digits", "-o", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def digits_inputs(int8_folder, tmp_path_factory):
    """64 real inputs: held-out digits, preprocessed, one .npy each."""
    from resgraph.quant.data import labelled_set
    x = labelled_set("digits", read_manifest(str(int8_folder))).arrays[:64]
    d = tmp_path_factory.mktemp("digits_npy")
    for i, v in enumerate(x):
        np.save(d / f"{i:03d}.npy", v)
    return d


def _copy(folder, dst):
    shutil.copytree(folder, dst)
    return dst


def _rewrite_manifest(folder, edit) -> None:
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m, indent=2))


def _plant_bad_scale(folder, factor: float = 50.0) -> None:
    """model.onnx with one activation QuantizeLinear's scale x factor, its sha256 rewritten in the manifest:
    a file that passes the integrity check and computes something else."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(folder / "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"][1]
    t = inits[q.input[1]]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(m, str(folder / "model.onnx"))
    data = (folder / "model.onnx").read_bytes()
    _rewrite_manifest(folder, lambda j: j["artifacts"]["model.onnx"].update(
        sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)))


def _parity(folder, inputs, text=False):
    r = run_cli("parity", str(folder), "--backends", "torch-cpu,ort-cpu", "--inputs", str(inputs),
                *(() if text else ("--json",)), timeout=120)
    return r, (None if text else json.loads(r.stdout))


def test_parity_judges_int8_by_the_gates_agreement_and_sqnr(int8_folder, digits_inputs):
    r, rep = _parity(int8_folder, digits_inputs)
    assert r.returncode == 0, r.stdout + r.stderr
    gate = read_manifest(str(int8_folder)).quantization.gate["thresholds"]
    assert rep["int8"]["min_agreement"] == gate["min_agreement"] and rep["int8"]["min_sqnr"] == gate["min_sqnr"]
    assert rep["int8"]["inputs"] == "real"
    (p,) = rep["pairs"]
    assert (p["reference"], p["other"], p["rule"], p["ok"]) == ("torch-cpu", "ort-cpu", "int8", True)
    assert p["agreement"] >= gate["min_agreement"] and p["sqnr_db"] >= gate["min_sqnr"]
    assert p["max_abs"] > 1e-4          # far beyond fp32's tolerance: the int8 rule passed it, not 1e-4
    assert "SQNR >= 20 dB" in p["tolerance"] and p["top1_agreement"] == p["agreement"]
    r, _ = _parity(int8_folder, digits_inputs, text=True)
    assert r.returncode == 0 and "SQNR dB" in r.stdout and "int8 gate" in r.stdout and "parity ok" in r.stdout


def test_random_inputs_report_int8_against_fp32_without_judging_it(int8_folder):
    """Noise is not calibration data (it clips at the calibrated ranges, its logits are near ties): the
    figures are given, the verdict waits for real inputs, and the text says so."""
    r, rep = _parity(int8_folder, 32)
    assert r.returncode == 0 and rep["int8"]["inputs"] == "random"
    (p,) = rep["pairs"]
    assert p["rule"] == "int8" and p["ok"] and p["sqnr_db"] is not None and "not judged" in p["tolerance"]
    r, _ = _parity(int8_folder, 32, text=True)
    assert "on real inputs only: give --inputs DIR" in r.stdout


def test_a_bad_int8_model_fails_parity(int8_folder, digits_inputs, tmp_path):
    bad = _copy(int8_folder, tmp_path / "bad")
    _plant_bad_scale(bad)
    r, rep = _parity(bad, digits_inputs)
    assert r.returncode == 1 and not rep["ok"] and rep["changed_since_compile"] == {}
    (p,) = rep["pairs"]
    assert p["rule"] == "int8" and not p["ok"] and p["sqnr_db"] < rep["int8"]["min_sqnr"]


class _S8Engine:
    """What the engine gate reads of the tensorrt session besides its outputs: its precision and manifest
    (its outputs here are ONNX Runtime's run of model.s8.onnx, the file an engine is built from: no
    TensorRT on this machine)."""
    precision = "int8"

    def __init__(self, folder):
        self.manifest = read_manifest(str(folder))


@pytest.mark.parametrize("planted", [False, True])
def test_the_engine_gate_uses_parity_s_int8_rule(int8_folder, planted):
    """compile --engine's gate on random inputs: an int8 engine against ONNX Runtime on the same file
    (model.s8.onnx) held to the gate's SQNR; against the fp32 checkpoint and the u8 model.onnx (other
    clipping ranges) reported; an engine whose output is off fails."""
    from resgraph.runtime import Options, open_session
    from resgraph.runtime.gate import S8_REFERENCE, _compare_point, s8_reference
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8), dtype=np.float32)
    with open_session(str(int8_folder), "ort-cpu") as o, open_session(str(int8_folder), "torch-cpu") as t, \
            s8_reference(str(int8_folder), Options()) as s8:
        assert s8.onnx == "model.s8.onnx"
        trt = s8.run(x) + 0.01 * np.random.default_rng(1).standard_normal((8, 10)).astype(np.float32)
        if planted:
            trt = trt + np.random.default_rng(2).standard_normal(trt.shape).astype(np.float32) * trt.std()
        sessions = {"tensorrt": _S8Engine(int8_folder), "torch-cpu": t, "ort-cpu": o, S8_REFERENCE: s8}
        outputs = {n: {"logits": trt if n == "tensorrt" else s.run(x)} for n, s in sessions.items()}
        pairs = {(p.reference, p.other): p for _, p in _compare_point("MIN", {"image": x}, outputs, sessions, "e")}
    assert all(p.rule == "int8" for k, p in pairs.items() if "tensorrt" in k)
    for other in ("torch-cpu", "ort-cpu"):
        p = next(p for k, p in pairs.items() if set(k) == {"tensorrt", other})
        assert p.ok and "not judged" in p.tolerance, p
    engine = pairs[("tensorrt", S8_REFERENCE)]
    assert "SQNR >= 20 dB (one int8 file" in engine.tolerance and engine.ok is not planted, engine


def test_ort_trt_verifies_model_s8_onnx_which_it_loads(int8_folder, tmp_path):
    from resgraph.runtime.base import loads, verify_loaded
    folder = _copy(int8_folder, tmp_path / "f")
    m = read_manifest(str(folder))
    assert loads(m, "ort-trt")[0] == "model.s8.onnx" and loads(m, "ort-cpu")[0] == "model.onnx"
    with open(folder / "model.s8.onnx", "ab") as f:
        f.write(b"\0")
    verify_loaded(str(folder), m, "ort-cpu")                # model.onnx is intact
    with pytest.raises(ArtifactError, match="model.s8.onnx is not the file compile wrote"):
        verify_loaded(str(folder), m, "ort-trt")
    shutil.copy(int8_folder / "model.s8.onnx", folder / "model.s8.onnx")
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    verify_loaded(str(folder), m, "ort-trt")                # what ort-trt loads is intact
    with pytest.raises(ArtifactError, match="model.onnx is not the file compile wrote"):
        verify_loaded(str(folder), m, "ort-cpu")


def test_run_and_bench_warn_on_a_cpu_weaker_than_the_gates(int8_folder, digits_inputs, tmp_path, monkeypatch):
    """The gate ran here (exact u8 x s8 products, VNNI); on a CPU whose /proc/cpuinfo has AVX2 alone
    (RESGRAPH_CPUINFO: another machine's file), run and bench say its products saturate."""
    from resgraph.runtime import cpu
    if cpu.describe()["int8_dot"] not in ("amx", "vnni"):
        pytest.skip("the gate ran on a CPU without exact integer dot products: no weaker one to show")
    avx2 = tmp_path / "cpuinfo"
    avx2.write_text("processor\t: 0\nmodel name\t: Old Xeon\nflags\t\t: fpu sse2 avx avx2 fma\n")
    one = str(digits_inputs / "000.npy")
    for warned in (True, False):
        if warned:
            monkeypatch.setenv("RESGRAPH_CPUINFO", str(avx2))
        else:
            monkeypatch.delenv("RESGRAPH_CPUINFO")
        r = run_cli("run", str(int8_folder), one, "--backend", "ort-cpu")
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("warning:") == int(warned) and ("saturate" in r.stderr) is warned, r.stderr
        r = run_cli("bench", str(int8_folder), "--backend", "ort-cpu,torch-cpu", "--batch", "1", "--duration", "0.05",
                    "--warmup", "0", "--json")
        rep = json.loads(r.stdout)
        assert len(rep["warnings"]) == int(warned) and r.stderr.count("this CPU's integer dot product is avx2") == int(warned)
    monkeypatch.setenv("RESGRAPH_CPUINFO", str(avx2))
    r = run_cli("run", str(int8_folder), one, "--backend", "torch-cpu")   # the float checkpoint: nothing to warn about
    assert "warning:" not in r.stderr


def test_the_warning_is_about_arithmetic_not_speed():
    from resgraph.runtime.cpu import weaker_than
    assert weaker_than({"int8_dot": "amx"}, {"int8_dot": "vnni"}) is None          # both exact
    assert "saturate" in weaker_than({"int8_dot": "vnni"}, {"int8_dot": "avx512"})
    assert weaker_than({"int8_dot": "avx2"}, {"int8_dot": "vnni"}) is None
    assert weaker_than({"int8_dot": None}, {"int8_dot": "avx2"}) is None             # unknown: no claim


def test_bench_measures_an_int8_folder(int8_folder):
    r = run_cli("bench", str(int8_folder), "--backend", "ort-cpu", "--batch", "1,4", "--duration", "0.05",
                "--warmup", "0", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["precision"] == "int8" and [(x["backend"], x["precision"], x["batch"]) for x in rep["results"]] == \
        [("ort-cpu", "int8", 1), ("ort-cpu", "int8", 4)]
    assert all(x["throughput"]["images_per_s"] > 0 for x in rep["results"])


def test_doctor_reports_the_cpus_integer_dot_product():
    from resgraph.runtime import cpu
    r = run_cli("doctor", "--json")
    assert json.loads(r.stdout)["cpu"] == cpu.describe()
    r = run_cli("doctor")
    tier = cpu.describe()["int8_dot"]
    line = next(x for x in r.stdout.splitlines() if x.startswith("CPU int8"))
    assert f"{tier or 'unknown'}: {cpu.meaning(tier)}" in line


def test_export_triton_serves_the_u8_model_on_cpu(int8_folder, tmp_path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="tritonclient[grpc] is not installed (pip install 'resgraph[serve]')")
    import onnxruntime as ort
    from google.protobuf import text_format

    from resgraph.runtime import open_session
    from resgraph.triton.export import TritonOptions, export_triton
    path = export_triton(str(int8_folder), str(tmp_path / "repo"), TritonOptions())
    with open(os.path.join(path, "config.pbtxt")) as f:
        c = text_format.Parse(f.read(), model_config_pb2.ModelConfig())   # Triton's own parser
    assert c.platform == "onnxruntime_onnx"
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in c.instance_group] == ["KIND_CPU"]
    assert os.listdir(os.path.join(path, "1")) == ["model.onnx"]
    served = os.path.join(path, "1", "model.onnx")
    assert open(served, "rb").read() == (int8_folder / "model.onnx").read_bytes()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8), dtype=np.float32)
    s = ort.InferenceSession(served, providers=["CPUExecutionProvider"])
    with open_session(str(int8_folder), "ort-cpu") as direct:
        assert np.array_equal(s.run(None, {"image": x})[0], direct.run(x))
    gpu = export_triton(str(int8_folder), str(tmp_path / "repo2"), TritonOptions(kind="gpu"))
    with open(os.path.join(gpu, "config.pbtxt")) as f:
        assert "KIND_GPU" in f.read()          # asked for: honoured
