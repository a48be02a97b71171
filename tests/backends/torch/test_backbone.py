"""A classifier's weights imported into a backbone spec: torchvision's resnet50 into
specs/resnet50_backbone.yaml (its stem and four stages, outputs c3, c4, c5 from layer2..layer4, no head).

The head's tensors are left out and listed; the outputs equal torchvision's own feature extractor
(create_feature_extractor on layer2..layer4) through PyTorch and through the compiled ONNX model on
ONNX Runtime, at two input sizes. "Within 1e-5 relative" means, per output, max |ours - theirs|
<= 1e-5 * max |theirs|. torchvision's model is random (weights=None) with random bn statistics:
nothing is downloaded. One import and one compile serve the whole module (resnet50 on CPU, batch 1).
"""
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch.importer import import_weights  # noqa: E402
from resgraph.backends.torch.torchvision import torchvision_model  # noqa: E402
from resgraph.cli import cli  # noqa: E402
from conftest import ROOT, import_refusal  # noqa: E402
from test_torchvision_import import randomise_bn  # noqa: E402

SPEC = ROOT / "specs" / "resnet50_backbone.yaml"
STAGES = {"layer2": "c3", "layer3": "c4", "layer4": "c5"}
SIZES = [(224, 224), (160, 96)]   # valid: every size from 32 to 2048 (check); the second not square
HEAD = "fc.weight [1000, 2048], fc.bias [1000]"


def relative(got, want) -> float:
    return float(abs(got - want).max() / abs(want).max())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(torchvision's model, the import's output, the checkpoint, the compiled folder): the
    command line's import-weights (from a .pth of the model) and compile, run once."""
    tmp = tmp_path_factory.mktemp("backbone")
    tv = randomise_bn(torchvision_model("resnet50", seed=0))
    torch.save(tv.state_dict(), tmp / "resnet50.pth")
    weights, folder = tmp / "backbone.safetensors", tmp / "compiled"
    r = CliRunner().invoke(cli, ["import-weights", "torchvision:resnet50", "--spec", str(SPEC),
                                 "--weights-file", str(tmp / "resnet50.pth"), "-o", str(weights)])
    assert r.exit_code == 0, r.output
    c = CliRunner().invoke(cli, ["compile", str(SPEC), "--weights", str(weights), "-o", str(folder)])
    assert c.exit_code == 0, c.output
    return tv, r.output, weights, folder


@pytest.fixture(scope="module")
def reference(imported):
    """torchvision's feature extractor's c3, c4, c5 on one random image per size."""
    from torchvision.models.feature_extraction import create_feature_extractor
    extractor = create_feature_extractor(imported[0], STAGES).eval()
    out = {}
    for h, w in SIZES:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            out[h, w] = x, extractor(x)
    return out


def test_the_spec_reads_as_a_backbone():
    c = resgraph.check(str(SPEC))
    assert c.graph.outputs == (("c3", "layer2.3.post"), ("c4", "layer3.5.post"), ("c5", "layer4.2.post"))
    assert c.io_shapes() == ([[3, "H", "W"]], [[512, "ceil(H / 8)", "ceil(W / 8)"],
                                               [1024, "ceil(H / 16)", "ceil(W / 16)"],
                                               [2048, "ceil(H / 32)", "ceil(W / 32)"]])
    assert c.sizes.valid == {"H": list(range(32, 2049)), "W": list(range(32, 2049))}
    # resnet50's parameters less its head (fc: 2048 x 1000 + 1000)
    assert c.params == 25_557_032 - 2_049_000 and c.spec.labels is None and not c.warnings


def test_import_lists_the_head_it_leaves_out(imported):
    _, output, weights, _ = imported
    lines = output.splitlines()
    assert lines[0].startswith(f"wrote {weights}: 318 tensors, 23,508,032 parameters from torchvision:resnet50")
    assert lines[0].endswith("verified: largest output difference 0")
    assert lines[1] == ("outputs compared with torchvision:resnet50's modules, on one input of 3x224x224: "
                        "c3 with layer2, c4 with layer3, c5 with layer4")
    assert lines[2] == f"left out 2 tensors of torchvision:resnet50 that the spec has no place for: {HEAD}"


def test_torch_outputs_equal_torchvisions_feature_extractor(imported, reference):
    module = resgraph.to_torch(str(SPEC), weights=str(imported[2])).eval()
    for (h, w), (x, want) in reference.items():
        with torch.no_grad():
            got = dict(zip(STAGES.values(), module(x), strict=True))
        for name in STAGES.values():
            assert got[name].shape == want[name].shape, (h, w, name)
            assert relative(got[name], want[name]) <= 1e-5, (h, w, name, relative(got[name], want[name]))
    assert want["c5"].shape == (1, 2048, 5, 3)   # 160x96: ceil(160 / 32) x ceil(96 / 32)


def test_onnx_runtime_outputs_equal_torchvisions_feature_extractor(imported, reference):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from resgraph.runtime.session import open_session
    session = open_session(str(imported[3]), "ort-cpu")
    assert [t.name for t in session.outputs] == list(STAGES.values())
    for (h, w), (x, want) in reference.items():
        got = session.run_all({"image": x.numpy()})
        assert list(got) == list(STAGES.values())
        for name in STAGES.values():
            assert got[name].shape == tuple(want[name].shape), (h, w, name)
            assert relative(torch.from_numpy(got[name]), want[name]) <= 1e-5, (h, w, name)


def test_a_checkpoint_without_a_tensor_the_spec_needs_is_refused(tmp_path, imported):
    state = imported[0].state_dict()
    del state["layer4.2.bn3.running_var"]
    torch.save(state, tmp_path / "short.pth")
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(cli, ["import-weights", "torchvision:resnet50", "--spec", str(SPEC),
                                 "--weights-file", str(tmp_path / "short.pth"), "-o", str(out)])
    assert r.exit_code == 1 and not out.exists(), r.output
    assert f"{tmp_path / 'short.pth'}: error:" in r.output and "layer4.2.bn3.running_var" in r.output


def test_a_spec_that_needs_more_than_the_source_is_refused(tmp_path):
    # a P6-style extra conv after layer4: torchvision's resnet50 has nothing for it (its fc is a linear)
    text = SPEC.read_text()
    text = text.replace("  - {name: c5, from: layer4}\n", "  - {name: c5, from: layer4}\n  - {name: p6, from: p6}\n")
    text += "  - conv: {id: p6, out: 256, kernel: 3, stride: 2}\n"
    path = tmp_path / "p6.yaml"
    path.write_text(text)
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(cli, ["import-weights", "torchvision:resnet50", "--spec", str(path), "-o", str(out)])
    assert r.exit_code == 1 and not out.exists(), r.output
    line = len(text.splitlines())
    assert f"{path}:{line}:" in r.output
    assert "tensor 318 in execution order differs (a conv vs a linear (a conv pairs with a linear only" in r.output
    assert "ours is p6.weight [256, 2048, 3, 3] of a conv, torchvision's is fc.weight [1000, 2048] of a linear" in r.output


def test_a_spec_with_more_tensors_than_the_source_is_refused(write_spec):
    # the classifier and one more layer after its head: the source has run out (matching only, on meta)
    text = (ROOT / "specs" / "resnet50.yaml").read_text().replace("labels: imagenet_classes.txt", "")
    text += "  - linear: {id: fc2, out: 10}\n"
    d = import_refusal(write_spec(text), torchvision_model("resnet50", device="meta"))
    assert "tensor 320 in execution order differs (ours has more tensors)" in d.message
    assert "ours is fc2.weight [10, 1000] of a linear, torchvision's is nothing (it has no more tensors)" in d.message
    assert d.loc.line == len(text.splitlines())


def test_a_stage_shorter_than_the_sources_is_refused(write_spec):
    # resnet101's layer3 has 23 blocks; the spec's 6 end inside it, so c4 would not be its layer3
    text = SPEC.read_text().replace("  - {name: c5, from: layer4}\n", "")
    text = text[:text.index("  - bottleneck: {id: layer4")]
    path = write_spec(text)
    d = import_refusal(path, torchvision_model("resnet101", device="meta"))
    assert d.message.startswith("cannot import torchvision's resnet101 weights: output c4 ends the spec's layer3, "
                                "whose weights are torchvision's layer3, but layer3 goes on where the spec stops: "
                                "layer3.6.conv1.weight [256, 1024, 1, 1], layer3.6.bn1.weight [256] and ")
    assert d.loc.file == path and text.splitlines()[d.loc.line - 1].startswith("  - bottleneck: {id: layer3")


class Small(nn.Module):
    """conv, bn, relu, then a head: a classifier small enough to build any number of times."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


SMALL = """resgraph: 1
name: small_backbone
input: {shape: [3, 8, 8]}
outputs: [{name: pre, from: conv}, {name: feat, from: act}]
layers:
  - conv: {id: conv, out: 8, kernel: 3}
  - bn
  - relu: {id: act}
"""


def test_outputs_without_a_module_of_their_own_are_named_not_compared(write_spec):
    torch.manual_seed(0)
    model = randomise_bn(Small())
    module = resgraph.to_torch(write_spec(SMALL), init=False)
    r = import_weights(module, model, verify=True)
    assert r["left_out"] == {"head.weight": [10, 8], "head.bias": [10]}
    assert r["compared"] == {"pre": "conv", "feat": None} and r["max_abs_diff"] == 0
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _, feat = module.eval()(x)
        assert torch.equal(feat, torch.relu(model.bn(model.conv(x))))


def test_a_group_that_spans_several_of_their_modules_is_compared_inside(write_spec):
    # the spec's stem holds Small's conv and bn, which no one module of Small holds: compared at the bn
    path = write_spec(SMALL.replace("layers:\n  - conv: {id: conv, out: 8, kernel: 3}\n  - bn\n",
                                    "blocks:\n  stem: {layers: [conv: {out: 8, kernel: 3}, bn]}\nlayers:\n  - stem: {id: stem}\n")
                      .replace("{name: pre, from: conv}", "{name: pre, from: stem}"))
    r = import_weights(resgraph.to_torch(path, init=False), randomise_bn(Small()), verify=True)
    assert r["compared"] == {"pre": "bn", "feat": None} and r["max_abs_diff"] == 0
    assert list(r["left_out"]) == ["head.weight", "head.bias"]


def test_a_spec_that_ends_inside_one_of_their_layers_is_refused(write_spec):
    # the spec's conv has no bias; Small's has: ending there would drop part of a layer, not a head
    path = write_spec(SMALL.replace("kernel: 3}", "kernel: 3, bias: false}").replace("  - bn\n  - relu: {id: act}\n", "")
                      .replace(", {name: feat, from: act}", ""))
    d = import_refusal(path, Small().to("meta"))
    assert "tensor 1 in execution order differs (ours has ended inside a layer)" in d.message
    assert "torchvision" not in d.message and "Small's is conv.bias [8] of a conv" in d.message
