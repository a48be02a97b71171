"""`resgraph parity --locate` (resgraph/locate/): a planted fault is found at its spec line.

Each fault is planted in a copy of a compiled folder's model.onnx (one layer's weights x 1.01, the
manifest's sha256 rewritten so that the folder still opens): ort-cpu against torch-cpu must name that
layer's path and line. Real onnxruntime and torch throughout.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT, run_cli

from resgraph.errors import BackendError, OptionError
from resgraph.locate import check_locatable, locate
from resgraph.manifest import read_manifest

DIGITS = str(ROOT / "specs" / "digits_resnet.yaml")
DIGITS_W = str(ROOT / "specs" / "weights" / "digits_resnet.safetensors")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from resgraph.compile import compile_spec
    out = tmp_path_factory.mktemp("locate") / "digits"
    compile_spec(DIGITS, weights=DIGITS_W, out=str(out))
    return out


def plant(folder, dst, initializer: str, factor: float = 1.01):
    """A copy of `folder` whose model.onnx has `initializer` x factor, its sha256 rewritten in the manifest."""
    import onnx
    from onnx import numpy_helper
    shutil.copytree(folder, dst)
    m = onnx.load(str(dst / "model.onnx"))
    t = next(t for t in m.graph.initializer if t.name == initializer)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(m, str(dst / "model.onnx"))
    data = (dst / "model.onnx").read_bytes()
    j = json.loads((dst / "manifest.json").read_text())
    j["artifacts"]["model.onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (dst / "manifest.json").write_text(json.dumps(j, indent=2))
    return dst


def spec_line(folder, text: str) -> int:
    """The 1-based line of the folder's spec.yaml that holds `text`."""
    return next(i for i, s in enumerate((folder / "spec.yaml").read_text().splitlines(), 1) if text in s)


@pytest.mark.parametrize("layer, text, merged", [
    ("conv1", "id: conv1", ("bn1",)),                                        # the stem
    ("layer2.shortcut.conv", "    residual:", ("layer2.shortcut.bn",)),          # a Ws (the block's shortcut projection)
    ("layer1.conv2", "- conv: {out: $out, kernel: 3}", ("layer1.bn2",)),    # the conv feeding layer1's residual add
    ("layer3.conv1", "stride: $stride}", ("layer3.bn1",)),                   # the last block
    ("fc", "id: fc", ()),                                                   # the head
])
def test_a_planted_fault_is_located_at_its_layer(digits, tmp_path, layer, text, merged):
    bad = plant(digits, tmp_path / "bad", f"{layer}.weight")
    got = locate(str(bad), "torch-cpu", "ort-cpu")
    first = got.first
    assert first is not None and first.path == layer, [(r.path, r.ok) for r in got.rows]
    assert (first.loc.file, first.loc.line) == (str(bad / "spec.yaml"), spec_line(bad, text))
    assert first.merged == merged and got.fused is None and not got.notes   # model.onnx's graph is the compiler's
    before = got.rows[:[r.path for r in got.rows].index(layer)]
    assert before and all(r.ok for r in before) or layer == "conv1"
    chain = got.chain(first)
    assert chain[-1] is first and chain[0].path == "conv1"
    assert first.max_scaled > 1e3 * max((c.max_scaled for c in chain[:-1]), default=1e-9) or layer == "conv1"


def test_a_late_block_of_resnet18_untrained(tmp_path):
    """A conv of resnet18's last block (random weights: the per-tensor fp32 noise floor holds every clean layer)."""
    from resgraph.compile import compile_spec
    clean = tmp_path / "r18"
    compile_spec(str(ROOT / "specs" / "resnet18.yaml"), out=str(clean))
    assert locate(str(clean), "torch-cpu", "ort-cpu", source="2").first is None
    got = locate(str(plant(clean, tmp_path / "bad", "layer4.1.conv2.weight")), "torch-cpu", "ort-cpu", source="2")
    assert got.first.path == "layer4.1.conv2" and "in layer4.1" in got.first.site


def test_the_cli_prints_the_located_line_and_fails(digits, tmp_path):
    bad = plant(digits, tmp_path / "bad", "layer2.shortcut.conv.weight")
    r = run_cli("parity", str(bad), "--backends", "torch-cpu,ort-cpu", "--locate", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    line = spec_line(bad, "    residual:")
    assert f"spec.yaml:{line}:5: note: ort-cpu parts from torch-cpu first at layer2.shortcut.conv" in r.stdout
    assert "residual:" in r.stdout and "^" in r.stdout and "FIRST" in r.stdout
    r = run_cli("parity", str(bad), "--backends", "torch-cpu,ort-cpu", "--locate", "--json", timeout=120)
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and not rep["ok"]
    assert rep["locate"]["first"]["path"] == "layer2.shortcut.conv" and rep["locate"]["first"]["line"] == line
    assert rep["locate"]["chain"][-1] == "layer2.shortcut.conv" and len(rep["locate"]["rows"]) == 22


def test_a_clean_folder_locates_nothing(digits):
    r = run_cli("parity", str(digits), "--backends", "torch-cpu,ort-cpu", "--locate", timeout=120)
    assert r.returncode == 0 and "every layer of ort-cpu is within the tolerance of torch-cpu" in r.stdout


@pytest.fixture(scope="module")
def fp16_huge_bn(tmp_path_factory):
    """An fp16 folder compiled with --no-fold whose layer2.bn1 scales by gamma / sqrt(var + eps) ~ 1e5
    (gamma 60000 fits fp16; its running mean 0): ONNX Runtime folds that bn into the conv itself, in fp16,
    and the folded weights overflow to inf (the outputs are NaN)."""
    from safetensors.numpy import load_file, save_file

    from resgraph.compile import compile_spec
    d = tmp_path_factory.mktemp("fp16")
    w = load_file(DIGITS_W)
    w["layer2.bn1.weight"] = np.full_like(w["layer2.bn1.weight"], 60000.0)
    w["layer2.bn1.running_mean"] = np.zeros_like(w["layer2.bn1.running_mean"])
    save_file(w, str(d / "w.safetensors"))
    compile_spec(DIGITS, weights=str(d / "w.safetensors"), out=str(d / "f"), precision="fp16", fold=False)
    return d / "f"


def test_an_fp16_overflow_from_a_huge_bn_scale_is_that_bn(fp16_huge_bn):
    r = run_cli("parity", str(fp16_huge_bn), "--backends", "torch-cpu,ort-cpu", "--locate", "--json", timeout=120)
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and not rep["ok"]
    first = rep["locate"]["first"]
    assert rep["locate"]["rule"] == "fp16" and first["path"] == "layer2.bn1"
    assert first["line"] == spec_line(fp16_huge_bn, "- bn") == 18   # the block's bn after its first conv
    paths = [x["path"] for x in rep["locate"]["rows"]]
    assert all(x["ok"] for x in rep["locate"]["rows"][:paths.index("layer2.bn1")])


def test_through_onnx_runtimes_fusions(fp16_huge_bn, monkeypatch):
    """The overflow itself lives in ONNX Runtime's own conv+bn fusion, which exposing every tensor turns
    off: with the exposed run's verdict set aside, the cut-graph bisection finds the same bn, and its inf."""
    import resgraph.locate as L
    judge = L.judge

    def exposed_all_ok(*a):
        rows = judge(*a)
        for r in rows:
            r.ok = True
        return rows
    monkeypatch.setattr(L, "judge", exposed_all_ok)
    got = locate(str(fp16_huge_bn), "torch-cpu", "ort-cpu")
    assert got.fused is not None and got.first.path == "layer2.bn1" and got.first.nonfinite > 0
    assert "ONNX Runtime's graph optimisations" in got.notes[-1]


def test_nan_weights_are_located_at_their_layer(digits, tmp_path):
    got = locate(str(plant(digits, tmp_path / "nan", "layer2.conv1.weight", np.nan)), "torch-cpu", "ort-cpu")
    assert got.first.path == "layer2.conv1" and got.first.nonfinite > 0 and got.first.max_abs == np.inf
    assert "NaN or inf on one side only" in got.diagnostic().message


def test_bad_inputs(digits, tmp_path):
    r = run_cli("parity", str(digits), "--backends", "torch-cpu,nope", "--locate")
    assert r.returncode == 1 and "nope" in r.stderr, r.stderr
    with pytest.raises(OptionError, match="cannot expose the layers of tensorrt"):
        locate(str(digits), "torch-cpu", "tensorrt")
    with pytest.raises(OptionError, match="compares float graphs") as e:
        check_locatable(replace(read_manifest(str(digits)), precision="int8"), ())
    assert "quantize FOLDER --explain --calibrate" in e.value.diagnostics[0].hint
    gone = tmp_path / "gone"
    shutil.copytree(digits, gone)
    (gone / "model.onnx").unlink()
    with pytest.raises(BackendError, match="no model.onnx"):
        locate(str(gone), "torch-cpu", "ort-cpu")
