"""The ops of the modern residual families under `resgraph train`: a small SE-ResNet (squeeze-and-excitation
gates as mul + hardsigmoid, stochastic depth on each residual branch, group norm in the stem, layer norm
before the classifier, zero_residual) learns digits; drop_path draws in training only; the trained
checkpoint compiles to ONNX that ONNX Runtime runs as PyTorch does; --resume stays exact with drop_path."""
import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("sklearn", reason="scikit-learn (digits) is not installed")

import resgraph  # noqa: E402
from resgraph.backends.torch import read_checkpoint  # noqa: E402
from resgraph.backends.torch.modules import DropPath  # noqa: E402
from resgraph.frontend import check_file  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402
from resgraph.training.data import load_data  # noqa: E402
from conftest import run_cli, run_interrupted_and_resumed  # noqa: E402

# scikit-learn's digits, as specs/digits_resnet.yaml (same preprocess, widths and strides), with each basic
# block an SE block (Hu et al. 2018, as timm's seresnet: the gate after the last bn, before the add)
# carrying drop_path (Huang et al. 2016). With zero_residual the bn before each gate (`feat`) starts at 0.
SE_RESNET = """resgraph: 1
name: digits_se_resnet
description: "A small SE-ResNet for scikit-learn's 8x8 digits: squeeze-and-excitation gates, stochastic depth, group and layer norm"
input: {name: image, shape: [1, 8, 8]}
preprocess: {mean: [0.3], std: [0.38]}
output: {name: logits}
labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
defaults:
  conv: {bias: false}
init: {zero_residual: true}
blocks:
  se_basic:
    args: {out: null, stride: 1, squeeze: 8, p: 0.1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - bn
        - relu
        - conv: {out: $out, kernel: 3}
        - bn: {id: feat}
        - global_avgpool                          # squeeze: [C, H, W] -> [C, 1, 1]
        - conv: {out: $squeeze, kernel: 1, bias: true}
        - relu
        - conv: {out: $out, kernel: 1, bias: true}
        - hardsigmoid: {id: gate}
        - mul: {in: feat, from: [gate]}           # excite: [C, H, W] * [C, 1, 1]
        - drop_path: {p: $p}                      # stochastic depth: the branch, per sample
      post: relu
layers:
  - conv: {id: conv1, out: 16, kernel: 3}
  - groupnorm: {id: gn1, groups: 4}
  - hardswish: {id: act1}
  - se_basic: {id: layer1, out: 16}
  - se_basic: {id: layer2, out: 32, stride: 2}
  - se_basic: {id: layer3, out: 64, stride: 2}
  - global_avgpool: {id: avgpool}
  - flatten
  - layernorm: {id: head_norm}
  - linear: {id: fc, out: 10}
"""
EPOCHS = 12
DROPS = ["layer1.drop_path1", "layer2.drop_path1", "layer3.drop_path1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One training run, through the command line as a user runs it (~4 s on one CPU thread)."""
    root = tmp_path_factory.mktemp("se")
    spec = root / "digits_se_resnet.yaml"
    spec.write_text(SE_RESNET)
    out = root / "run"
    p = run_cli("train", str(spec), "--data", "digits", "--epochs", str(EPOCHS), "--threads", "1", "-o", str(out),
                timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(out / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return spec, out, rows


def val_set(spec):
    data = load_data("digits", check_file(str(spec)).spec)
    x, y = data.val.tensors
    return x, y


def test_spec_is_clean_and_zero_residual_starts_each_block_at_its_shortcut(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SE_RESNET)
    p = run_cli("check", str(path), "--strict")
    assert p.returncode == 0, p.stdout + p.stderr      # no warning either
    from resgraph.backends.torch.init import zero_residual_layers
    checked = check_file(str(path))
    assert zero_residual_layers(checked.graph) == [(f"layer{i}.feat", True) for i in (1, 2, 3)]
    m = resgraph.to_torch(checked, seed=0)
    for i in (1, 2, 3):
        assert torch.equal(m.get_submodule(f"layer{i}.feat").weight, torch.zeros(16 * 2 ** (i - 1)))


def test_se_resnet_learns_digits(run):
    spec, out, rows = run
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[-1]["val_acc"] >= 0.95, rows[-1]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 10
    # the saved weights are those of the last epoch: resgraph eval measures the same held-out accuracy
    p = run_cli("eval", str(spec), "--weights", str(out / "last.safetensors"), "--data", "digits")
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.split("accuracy ")[1].split(",")[0]) == pytest.approx(rows[-1]["val_acc"], abs=1e-3)
    _, meta = read_checkpoint(str(out / "last.safetensors"))
    assert meta["untrained"] == "false" and meta["epoch"] == str(EPOCHS)


def test_drop_path_draws_in_training_only(run):
    """module.train(): each drop_path zeroes whole samples of its branch and scales the rest by 1 / (1 - p),
    and two draws differ; module.eval(): the identity, and the network is deterministic."""
    spec, out, _ = run
    x, _ = val_set(spec)
    m = resgraph.to_torch(str(spec), weights=str(out / "last.safetensors"))
    seen = {}
    for name in DROPS:
        mod = m.get_submodule(name)
        assert isinstance(mod, DropPath) and mod.p == 0.1
        mod.register_forward_hook(lambda mod, args, y, name=name: seen.__setitem__(name, (args[0].clone(), y.clone())))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    dropped = 0
    for name in DROPS:
        xin, y = seen[name]
        gone = y.flatten(1).abs().sum(1) == 0
        live = xin.flatten(1).abs().sum(1) != 0
        assert torch.equal(y[~gone], xin[~gone] / 0.9), name        # kept: rescaled, whole
        dropped += int((gone & live).sum())
    assert 0.03 < dropped / (len(DROPS) * len(x)) < 0.2           # p = 0.1 of 3 x 359 samples
    torch.manual_seed(1)
    assert not torch.equal(m(x), a)                               # another draw, another network
    m.eval()
    e = m(x)
    assert torch.equal(m(x), e)
    for name in DROPS:
        xin, y = seen[name]
        assert torch.equal(y, xin), name


def test_compiled_checkpoint_has_no_drop_path_and_matches_onnxruntime(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    spec, out, rows = run
    weights = str(out / "last.safetensors")
    g, _ = for_inference(check_file(str(spec)).graph, {}, fold=False)
    assert not [n for n in g.nodes if n.op == "drop_path"]
    folder = tmp_path / "compiled"
    p = run_cli("compile", str(spec), "--weights", weights, "-o", str(folder))
    assert p.returncode == 0, p.stdout + p.stderr
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert {"Mul", "HardSigmoid", "HardSwish", "LayerNormalization"} <= ops, ops
    assert not ops & {"Dropout", "Bernoulli", "RandomUniform", "RandomUniformLike", "RandomNormal",
                      "RandomNormalLike"}, ops
    # the held-out digits through ONNX Runtime and through the eval-mode module
    x, y = val_set(spec)
    s = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = resgraph.to_torch(str(spec), weights=weights).eval()(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == y.numpy()).mean() == pytest.approx(rows[-1]["val_acc"], abs=1e-3)
    # and resgraph's own parity check on the artifact
    p = run_cli("parity", str(folder), "--backends", "ort-cpu,torch-cpu", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    [pair] = json.loads(p.stdout)["pairs"]
    assert pair["ok"] and pair["top1_agreement"] == 1.0


def test_resume_continues_exactly_with_drop_path(tmp_path):
    """drop_path draws from the global generator: a resumed run must draw what an uninterrupted one draws
    (each epoch reseeds it from --seed, the epoch and the rank), or it ends elsewhere."""
    spec = tmp_path / "s.yaml"
    spec.write_text(SE_RESNET)
    ta, tb = run_interrupted_and_resumed(tmp_path, spec=str(spec), data="digits", batch_size=64, progress=False,
                                         epochs=3, threads=1, save_every=0)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
