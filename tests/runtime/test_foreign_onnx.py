"""A plain ONNX file that resgraph did not compile, through run, bench, parity (--reference) and engine
build: real torch exports (torch.onnx.export, legacy and dynamo) of a small torchvision ResNet, real
ONNX Runtime, and the same weights compiled by resgraph beside them. Bad files are refused cleanly,
with nothing written.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, run_cli
from resgraph.errors import ArtifactError, BackendError, DataError, OptionError
from resgraph.runtime import Options, open_session
from resgraph.runtime.foreign import foreign_model, ort_max_opset

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--resize", "73", "--crop", "64"]
PRE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 73, "crop": 64}


def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def export(model, path, dynamo=False, batch="dynamic", opset=17):
    x = torch.randn(2, 3, 64, 64)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["image"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    else:
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if batch == "dynamic" else None
        torch.onnx.export(model, (x[:1] if batch == 1 else x,), str(path), dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset)
    return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """resnet18 at 64x64 (random init), exported by the legacy exporter, and its torch module."""
    d = tmp_path_factory.mktemp("foreign")
    model = resnet18()
    return export(model, d / "r18.onnx"), model


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image
    p = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(p)
    return str(p)


def torch_on(model, image):
    """The module's logits on the image through resgraph's preprocess (torchvision's ImageNet transform)."""
    from resgraph.runtime.preprocess import Preprocess
    x = Preprocess.resolve(PRE, (3, 64, 64)).file(image)
    with torch.no_grad():
        return model(torch.from_numpy(x[None])).numpy()[0]


def listing(folder):
    return sorted(os.listdir(folder))


# --- run, bench, parity on a plain ONNX file ----------------------------------------------------------

def test_run_takes_a_plain_onnx_file_with_imagenet_flags(exported, image):
    path, model = exported
    p = run_cli("run", path, image, "--json", "--top-k", "10", *IMAGENET, "--backend", "ort-cpu")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    want = torch_on(model, image)
    soft = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
    assert [c["index"] for c in row["top"]] == list(np.argsort(-want)), (row, want)
    assert all(abs(c["score"] - soft[c["index"]]) <= 1e-5 for c in row["top"])


def test_the_session_equals_torch_and_takes_its_preprocess_from_the_flags(exported, image):
    path, model = exported
    with open_session(foreign_model(path, PRE), "ort-cpu", Options(threads=1)) as s:
        x = s.preprocess.file(image)
        y = s.run(x[None])[0]
        assert s.preprocess.mean == tuple(PRE["mean"]) and s.preprocess.resize == 73
    want = torch_on(model, image)
    assert np.abs(y - want).max() <= 1e-4 * (1 + np.abs(want).max())


def test_bench_measures_a_plain_onnx_file(exported):
    path, _ = exported
    p = run_cli("bench", path, "--batch", "1,2", "--duration", "0.05", "--warmup", "0", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["model"] == "r18" and [x["batch"] for x in r["results"]] == [1, 2]
    assert {x["backend"] for x in r["results"]} == {"ort-cpu"}
    assert 140e6 < r["macs_per_image"] < 160e6   # resnet18 at 64x64: 1.81 GMACs x (64/224)^2


def test_parity_saves_and_compares_a_reference(exported, tmp_path):
    path, model = exported
    ref = tmp_path / "ref.npz"
    p = run_cli("parity", path, "--save-reference", str(ref), "--inputs", "3")
    assert p.returncode == 0, p.stderr
    z = np.load(ref)
    assert sorted(z.files) == ["image", "logits"] and z["image"].shape == (3, 3, 64, 64)
    p = run_cli("parity", path, "--reference", str(ref), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["pairs"][0]["reference"] == "reference"
    # a reference made by torch itself, as any framework would write one
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        np.savez(tmp_path / "torch.npz", image=x, logits=model(torch.from_numpy(x)).numpy())
    assert run_cli("parity", path, "--reference", str(tmp_path / "torch.npz")).returncode == 0
    with torch.no_grad():
        np.savez(tmp_path / "off.npz", image=x, logits=model(torch.from_numpy(x)).numpy() + 1e-2)
    p = run_cli("parity", path, "--reference", str(tmp_path / "off.npz"))
    assert p.returncode == 1 and "FAIL" in p.stdout


def test_a_reference_that_does_not_fit_the_model_is_a_clean_error(exported, tmp_path):
    path, _ = exported
    np.savez(tmp_path / "r.npz", image=np.zeros((2, 3, 64, 64), np.float32), out=np.zeros((2, 10), np.float32))
    with pytest.raises(DataError, match="the reference holds no logits"):
        from resgraph.runtime.reference import compare_reference
        compare_reference(foreign_model(path), "ort-cpu", str(tmp_path / "r.npz"), 8, Options())
    np.savez(tmp_path / "p.npz", image=np.array([object()], dtype=object), logits=np.zeros((1, 10), np.float32))
    p = run_cli("parity", path, "--reference", str(tmp_path / "p.npz"))
    assert p.returncode == 1 and "Python objects" in p.stderr


def test_a_dynamo_export_runs_too(tmp_path, image):
    """torch.onnx.export(dynamo=True): opset 18+, weights as external data beside the file."""
    model = resnet18()
    path = export(model, tmp_path / "r18d.onnx", dynamo=True)
    with open_session(foreign_model(path, PRE), "ort-cpu") as s:
        y = s.run(s.preprocess.file(image)[None])[0]
    want = torch_on(model, image)
    assert np.abs(y - want).max() <= 1e-4 * (1 + np.abs(want).max())


def test_a_file_that_fixes_its_batch_at_1_runs_batch_1(tmp_path, image):
    path = export(resnet18(), tmp_path / "b1.onnx", batch=1)
    assert foreign_model(path).batch == 1
    p = run_cli("run", path, image, image, *IMAGENET)
    assert p.returncode == 0 and p.stdout.count("photo.jpg") == 2, p.stderr
    p = run_cli("bench", path, "--duration", "0.02", "--warmup", "0", "--json")
    assert p.returncode == 0 and [r["batch"] for r in json.loads(p.stdout)["results"]] == [1], p.stderr
    p = run_cli("bench", path, "--batch", "8")
    assert p.returncode == 1 and "fixed at 1" in p.stderr
    with open_session(path, "ort-cpu") as s, pytest.raises(DataError, match="fixed at 1"):
        s.run(np.zeros((2, 3, 64, 64), np.float32))


# --- beside the same model compiled by resgraph ------------------------------------------------------

def test_the_export_equals_resgraphs_own_compile_of_the_same_weights(exported, tmp_path, image):
    from resgraph.backends.importer import import_model, write
    from resgraph.compile import compile_spec
    path, model = exported
    imported = import_model(model, name="r18", input_shape=(3, 64, 64))
    write(imported, str(tmp_path / "r18.yaml"), str(tmp_path / "w.safetensors"))
    folder = compile_spec(str(tmp_path / "r18.yaml"), weights=str(tmp_path / "w.safetensors"), out=str(tmp_path / "c")).out
    x = np.random.default_rng(2).standard_normal((4, 3, 64, 64), dtype=np.float32)
    with open_session(path, "ort-cpu") as a, open_session(str(folder), "ort-cpu") as b:
        ya, yb = a.run(x), b.run(x)
    assert np.abs(ya - yb).max() <= 1e-4 * (1 + np.abs(yb).max())


# --- bad input: a clean error, nothing written --------------------------------------------------------

def tiny(tmp_path, name="m.onnx", opset=17, dims=("N", 4), external=None):
    """Y = X @ W ([N, 4] -> [N, 2]); `external`: W's external-data location (the file written beside)."""
    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "W")
    if external is not None:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        w.external_data.add(key="location", value=external)
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(dims))],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return str(p)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "link.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location):
    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.ones(8, np.float32).tobytes())
    os.symlink(tmp_path / "outside.bin", d / "link.bin")
    path = tiny(d, external=location)
    before = listing(d)
    with pytest.raises(ArtifactError, match=r"tensor 'W''s external data location .*(not a file inside|leads outside)"):
        foreign_model(path)
    p = run_cli("run", path, str(tmp_path / "outside.bin"))
    assert p.returncode == 1 and "tensor 'W'" in p.stderr and "Traceback" not in p.stderr
    assert listing(d) == before


def test_external_data_inside_the_folder_is_read(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.ones(8, np.float32).tobytes())
    with open_session(tiny(tmp_path, external="w.bin"), "ort-cpu") as s:
        assert s.run(np.ones((3, 4), np.float32)).tolist() == [[4.0, 4.0]] * 3


def test_an_opset_the_back_end_cannot_read_is_refused(tmp_path):
    top = ort_max_opset()
    assert top is not None and top >= 17
    path = tiny(tmp_path, opset=top + 1)
    with pytest.raises(BackendError, match=rf"opset {top + 1}, but ONNX Runtime [\d.]+ \(ort-cpu\) reads opsets up to {top}"):
        open_session(path, "ort-cpu")
    p = run_cli("bench", path, "--backend", "ort-cpu", "--duration", "0.01")
    assert p.returncode == 1 and f"opset {top + 1}" in p.stderr and "Traceback" not in p.stderr
    with open_session(tiny(tmp_path, "ok.onnx", opset=top), "ort-cpu") as s:   # its newest is read
        assert s.run(np.ones((1, 4), np.float32)).shape == (1, 2)


@pytest.mark.parametrize("backend", ["torch-cpu", "torch-cuda", "tensorrt"])
def test_a_torch_or_engine_back_end_is_refused_with_the_reason(tmp_path, backend):
    with pytest.raises(BackendError, match="is a plain ONNX file: it has no"):
        open_session(tiny(tmp_path), backend)


@pytest.mark.parametrize("content", [b"not a model", b"", b"\x08\x07" * 3])
def test_a_malformed_file_is_a_clean_error(tmp_path, content):
    (tmp_path / "bad.onnx").write_bytes(content)
    before = listing(tmp_path)
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        foreign_model(str(tmp_path / "bad.onnx"))
    p = run_cli("parity", str(tmp_path / "bad.onnx"), "--save-reference", str(tmp_path / "r.npz"))
    assert p.returncode == 1 and "not an ONNX model" in p.stderr and "Traceback" not in p.stderr
    assert listing(tmp_path) == before


def test_a_symbolic_dim_other_than_the_batch_is_refused_by_name(tmp_path):
    with pytest.raises(ArtifactError, match=r"input 'X''s dim 1 is 'F', not a number"):
        foreign_model(tiny(tmp_path, dims=("N", "F")))


def test_flags_are_checked_against_the_model(exported):
    path, _ = exported
    with pytest.raises(OptionError, match="not 3 numbers"):
        foreign_model(path, {"mean": [0.5, 0.5]})
    with pytest.raises(OptionError, match="--crop 224, but the model's input is 64x64"):
        foreign_model(path, {"crop": 224})
    with pytest.raises(OptionError, match="is for a plain ONNX file"):
        from resgraph.runtime.foreign import model_of
        model_of(str(ROOT / "specs"), {"mean": [0.5]})


def test_the_saved_reference_is_not_written_on_an_error(exported, tmp_path):
    path, _ = exported
    p = run_cli("parity", path, "--save-reference", str(tmp_path / "r.npz"), "--backends", "torch-cpu")
    assert p.returncode == 1 and "plain ONNX file" in p.stderr
    assert listing(tmp_path) == []


def test_the_interpolation_choices_are_the_preprocess_filters():
    from resgraph.cli.foreign import INTERPOLATIONS
    from resgraph.runtime.preprocess import PIL_FILTERS
    assert set(INTERPOLATIONS) == set(PIL_FILTERS)


# --- the lean path, and engine build ------------------------------------------------------------------

def test_run_and_bench_of_a_plain_onnx_file_import_no_torch(tmp_path):
    path = tiny(tmp_path)
    np.save(tmp_path / "x.npy", np.ones(4, np.float32))
    probe = ("import sys\nfrom resgraph.cli import cli\n"
             f"for a in ({['run', path, str(tmp_path / 'x.npy')]!r}, {['bench', path, '--batch', '1', '--duration', '0.02', '--warmup', '0']!r}):\n"
             "    try:\n        cli(a, standalone_mode=False)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
             "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "LOADED []", p.stdout[-500:]


def test_engine_build_accepts_a_plain_onnx_file_up_to_tensorrt(tmp_path):
    import importlib.util
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the GPU tests build engines")
    path = tiny(tmp_path)
    before = listing(tmp_path)
    p = run_cli("engine", "build", path)
    assert p.returncode == 1 and "TensorRT is not installed" in p.stderr, p.stderr
    assert listing(tmp_path) == before
    shutil.copy(path, tmp_path / "copy.onnx")
    (tmp_path / "copy.onnx").write_bytes(b"junk")   # checked before TensorRT is looked for
    p = run_cli("engine", "build", str(tmp_path / "copy.onnx"))
    assert p.returncode == 1 and "not an ONNX model" in p.stderr
