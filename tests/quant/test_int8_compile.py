"""compile --precision int8 and resgraph quantize, end to end on the shipped trained digits model:
the folder they publish, determinism, inputs read as `run` reads them, the accuracy gate and every
user error (exit 1, nothing written)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from conftest import run_cli  # noqa: E402

from resgraph.compile import compile_spec  # noqa: E402
from resgraph.manifest import read_manifest  # noqa: E402
from resgraph.quant.data import _digits  # noqa: E402
from resgraph.quant.gate import QuantizationError, Thresholds  # noqa: E402
from resgraph.quant.pipeline import QuantOptions  # noqa: E402

SPEC, WEIGHTS = "specs/digits_resnet.yaml", "specs/weights/digits_resnet.safetensors"


def _int8(tmp_path, name="d8", **kw):
    kw.setdefault("calibrate", ("digits",))
    return compile_spec(SPEC, weights=WEIGHTS, out=str(tmp_path / name), precision="int8", quant=QuantOptions(**kw))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _int8(tmp_path_factory.mktemp("int8"), eval="digits").out


def test_the_folder_holds_both_encodings_and_says_which_back_end_reads_which(folder):
    m = read_manifest(folder)
    assert m.precision == "int8" and set(m.artifacts) >= {"model.onnx", "model.s8.onnx", "weights.safetensors"}
    q = m.quantization
    assert q.models == {"model.onnx": "u8", "model.s8.onnx": "s8"}
    assert m.onnx_file("ort-cpu") == "model.onnx" and m.onnx_file("tensorrt") == m.onnx_file("ort-trt") == "model.s8.onnx"
    zero_points = {f: {onnx.numpy_helper.to_array(t).dtype for t in onnx.load(os.path.join(folder, f)).graph.initializer
                       if t.name.endswith("/zero_point")} for f in q.models}
    assert zero_points == {"model.onnx": {np.dtype("uint8")}, "model.s8.onnx": {np.dtype("int8")}}
    # the gate ran on the labelled held-out split, both models within MLPerf's 99% of fp32 top-1
    g = q.gate
    assert g["labelled"] and g["passed"] and g["samples"] == 359 and g["thresholds"]["min_accuracy"] == 0.99
    for f in q.models:
        assert g["models"][f]["fp32_top1"] == pytest.approx(0.9833, abs=1e-4)
        assert g["models"][f]["top1"] >= 0.99 * g["models"][f]["fp32_top1"]
    # 512 of the 1,438 training digits, memory stated: one 2048-bin int64 histogram per tensor
    assert q.samples == 512 and q.method == "percentile" and q.percentile == 99.999
    assert q.state_bytes == len(_calibrated()) * (64 + 2048 * 8)
    assert q.cpu["int8_dot"] in ("amx", "vnni", "avx512", "avx2", "none", None)


def _calibrated() -> list[str]:
    """The IR paths calibrated: those either encoding reads a range of."""
    import resgraph
    from resgraph.passes.inference import for_inference
    from resgraph.quant.qdq import tensors_to_calibrate
    from safetensors.numpy import load_file
    graph, _ = for_inference(resgraph.check(SPEC).graph, load_file(WEIGHTS))
    return tensors_to_calibrate(graph)


def test_same_inputs_and_seed_give_the_same_bytes_and_npy_reads_as_digits(tmp_path, folder):
    """Deterministic for a given list and seed; a .npy of the same 512 samples in the same order is
    the same calibration (inputs are read as `run` reads them)."""
    a = _int8(tmp_path, "a", samples=100, seed=3, gate=False)
    b = _int8(tmp_path, "b", samples=100, seed=3, gate=False)
    c = _int8(tmp_path, "c", samples=100, seed=4, gate=False)
    sha = lambda r: r.manifest.artifacts["model.onnx"].sha256  # noqa: E731
    assert sha(a) == sha(b) != sha(c)
    assert a.manifest.quantization.calibration_sha256 != c.manifest.quantization.calibration_sha256
    x, _ = _digits(read_manifest(folder), "train")
    rows = np.sort(np.random.default_rng(0).choice(len(x), 512, replace=False))
    np.save(tmp_path / "cal.npy", x[rows])
    d = _int8(tmp_path, "d", calibrate=(str(tmp_path / "cal.npy"),), gate=False)
    e = _int8(tmp_path, "e", gate=False)
    assert sha(d) == sha(e)


def test_keep_float_leaves_those_layers_without_int8_weights(tmp_path):
    r = _int8(tmp_path, keep_float=("layer1", "fc"))
    q = r.manifest.quantization
    assert q.keep_float == ("layer1", "fc") and "layer1.conv1" in q.float_nodes and "conv1" not in q.float_nodes
    for f in q.models:
        inits = {t.name for t in onnx.load(os.path.join(r.out, f)).graph.initializer}
        assert "conv1.weight.int8" in inits
        assert not any(n.startswith(("layer1.", "fc.")) and n.endswith(".int8") for n in inits), f


def test_a_failing_gate_names_the_sensitive_layers_at_their_spec_lines_and_writes_nothing(tmp_path):
    with pytest.raises(QuantizationError) as e:
        _int8(tmp_path, thresholds=Thresholds(min_sqnr=90.0))
    d = e.value.diagnostics
    assert "fails its accuracy gate" in d[0].message and "--keep-float" in d[0].hint
    notes = d[1:]
    assert len(notes) == 5 and all(n.severity == "note" and n.loc.line > 0 for n in notes)
    assert all(n.loc.file.endswith("digits_resnet.yaml") for n in notes)
    sqnrs = [float(n.message.split("SQNR ")[1].split(" dB")[0]) for n in notes]
    assert sqnrs == sorted(sqnrs)
    assert not (tmp_path / "d8").exists()


def _fail(*args, cwd=None):
    r = run_cli(*args, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    return r.stderr


def test_user_errors_exit_1_and_write_nothing(tmp_path):
    out = str(tmp_path / "out")
    base = ("compile", SPEC, "--weights", WEIGHTS, "--precision", "int8", "-o", out)
    (tmp_path / "empty").mkdir()
    assert "no calibration inputs found" in _fail(*base, "--calibrate", str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    err = _fail(*base, "--calibrate", str(tmp_path / "bad"))
    assert "broken.png" in err and "cannot read this input" in err
    assert "2,000 calibration samples asked for, 1,438 found" in _fail(*base, "--calibrate", "digits",
                                                                        "--calibration-samples", "2000")
    for c in ("cat", "dog"):
        (tmp_path / "eval" / c).mkdir(parents=True)
        (tmp_path / "eval" / c / "x.png").write_bytes(b"")
    assert "not the model's labels: cat, dog" in _fail(*base, "--calibrate", "digits", "--eval", str(tmp_path / "eval"))
    assert "'layer9' is no layer or block" in _fail(*base, "--calibrate", "digits", "--keep-float", "layer9")
    assert "int8 needs calibration inputs" in _fail("compile", SPEC, "--weights", WEIGHTS, "--precision", "int8", "-o", out)
    assert "fails its accuracy gate" in _fail(*base, "--calibrate", "digits", "--min-sqnr", "90")
    assert not os.path.exists(out)


def test_quantize_takes_an_fp32_folder_only(tmp_path, folder):
    fp16 = compile_spec(SPEC, weights=WEIGHTS, out=str(tmp_path / "h"), precision="fp16").out
    assert "an fp16 folder: quantize starts from an fp32 one" in _fail("quantize", fp16, "--calibrate", "digits",
                                                                       "-o", str(tmp_path / "x"))
    assert "an int8 folder" in _fail("quantize", folder, "--calibrate", "digits", "-o", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_quantize_and_explain_from_a_compiled_folder(tmp_path):
    fp32 = compile_spec(SPEC, weights=WEIGHTS, out=str(tmp_path / "f")).out
    r = run_cli("quantize", fp32, "--calibrate", "digits", "--calibration-method", "minmax", "-o", str(tmp_path / "q"),
                timeout=120)
    assert r.returncode == 0, r.stderr
    assert "accuracy gate on digits" in r.stdout and read_manifest(str(tmp_path / "q")).quantization.method == "minmax"
    r = run_cli("quantize", fp32, "--calibrate", "digits", "--explain", "--min-sqnr", "38", timeout=180)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if "spec.yaml:" in line]
    assert [row[0] for row in rows][:4] == ["conv1", "layer1.conv1", "layer1.conv2", "layer1"]
    assert all(30 < float(row[2]) < 200 and 30 < float(row[3]) < 200 for row in rows)   # each unit alone is quantised
    assert "suggested: --keep-float" in r.stdout or "no --keep-float set" in r.stdout
    assert sorted(os.listdir(tmp_path)) == ["f", "q"]   # --explain wrote nothing


def test_a_folder_manifest_without_its_quantization_record_is_refused(tmp_path, folder):
    d = json.loads(open(os.path.join(folder, "manifest.json")).read())
    d["quantization"] = None
    os.makedirs(tmp_path / "x")
    for f in os.listdir(folder):
        if f != "manifest.json":
            os.link(os.path.join(folder, f), tmp_path / "x" / f)
    (tmp_path / "x" / "manifest.json").write_text(json.dumps(d))
    from resgraph.errors import ArtifactError
    with pytest.raises(ArtifactError, match="precision 'int8' without a quantization record"):
        read_manifest(str(tmp_path / "x"))


def test_a_sized_model_calibrates_on_several_sizes_and_runs_at_any_valid_one(tmp_path):
    """The U-Net (sizes: multiples of 4): calibration inputs of two sizes in one set; both int8 models
    keep the symbolic H and W and run at a third size, agreeing with fp32 per pixel."""
    from resgraph.runtime import open_session
    rng = np.random.default_rng(0)
    for n, s in ((4, 64), (2, 96)):
        np.save(tmp_path / f"cal{s}.npy", rng.standard_normal((n, 3, s, s)).astype(np.float32))
    r = compile_spec("specs/unet.yaml", out=str(tmp_path / "u8"), precision="int8",
                     quant=QuantOptions((str(tmp_path / "cal64.npy"), str(tmp_path / "cal96.npy")), gate=False))
    assert r.manifest.quantization.samples == 6 and r.manifest.quantization.gate["passed"] is None
    for f in ("model.onnx", "model.s8.onnx"):
        dims = [d.dim_param or d.dim_value for d in onnx.load(os.path.join(r.out, f)).graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "H", "W"], (f, dims)
    fp32 = compile_spec("specs/unet.yaml", out=str(tmp_path / "u32")).out
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    with open_session(r.out, "ort-cpu") as q, open_session(fp32, "ort-cpu") as f:
        a, b = q.run(x), f.run(x)
    assert a.shape == b.shape == (1, 2, 128, 128)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.95


def test_quantize_keeps_the_labels_of_a_spec_that_reads_them_from_a_file(tmp_path):
    """A compiled folder's spec.yaml is a copy: its `labels: FILE` is not beside it, the manifest holds
    the labels; quantize (and --explain) check the copy with those."""
    text = open(SPEC).read().replace('labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]', "labels: names.txt")
    assert "labels: names.txt" in text
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "digits.yaml").write_text(text)
    (tmp_path / "src" / "names.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    fp32 = compile_spec(str(tmp_path / "src" / "digits.yaml"), weights=WEIGHTS, out=str(tmp_path / "f")).out
    r = run_cli("quantize", fp32, "--calibrate", "digits", "--calibration-samples", "64", "-o", str(tmp_path / "q"),
                timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_manifest(str(tmp_path / "q")).labels == tuple(f"digit {i}" for i in range(10))
    r = run_cli("run", str(tmp_path / "q"), "examples/digits/samples/0012_digit-2.png")
    assert "digit 2" in r.stdout, r.stdout + r.stderr
