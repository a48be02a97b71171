"""torchvision models beyond the shipped specs, imported into fixture specs (tests/import_specs/):
mobilenet_v2 (depthwise convs, relu6, residual blocks without a post activation), vgg11_bn (a plain
network; at 32x32 its adaptive pool is a nearest upsample by 7) and regnet_x_400mf (grouped convs;
its shortcut projections run before the body).
"""
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")

import resgraph  # noqa: E402
from resgraph.backends.torch.importer import import_model, import_weights  # noqa: E402
from resgraph.backends.torch.torchvision import torchvision_model  # noqa: E402
from conftest import ROOT, import_refusal  # noqa: E402
from test_torchvision_import import assert_every_tensor_landed, assert_same_outputs, randomise_bn  # noqa: E402

SPECS = ROOT / "tests" / "import_specs"


@pytest.mark.parametrize("name, spec, size", [
    ("mobilenet_v2", "mobilenet_v2.yaml", 64),   # 64 -> 2x2 before the pool: still a valid MobileNetV2
    ("vgg11_bn", "vgg11_bn_32.yaml", 32),        # the spec's own input size
    ("regnet_x_400mf", "regnet_x_400mf.yaml", 64),
])
def test_outputs_equal_torchvisions(name, spec, size):
    tv = randomise_bn(torchvision_model(name, seed=0))
    module = resgraph.to_torch(SPECS / spec, init=False)
    report = import_weights(module, tv)
    assert report["tensors"] == len(tv.state_dict()) and report["unused"] == []
    assert report["params"] == sum(p.numel() for p in tv.parameters()) == resgraph.check(str(SPECS / spec)).params
    assert_every_tensor_landed(module, tv, report)
    assert_same_outputs(module, tv, size=size)


def test_mobilenet_v2_mapping():
    with torch.device("meta"):
        module = resgraph.to_torch(SPECS / "mobilenet_v2.yaml", init=False)
    m = import_weights(module, torchvision_model("mobilenet_v2", device="meta"))["mapping"]
    assert m["conv2"] == "features.1.conv.0.0"                        # the first block's depthwise conv
    assert m["inverted_residual1.inverted1.conv2"] == "features.3.conv.1.0"    # the first residual block's
    assert m["linear1"] == "classifier.1"


def test_mobilenet_v2_spec_does_not_take_mobilenet_v3():
    d = import_refusal(SPECS / "mobilenet_v2.yaml", torchvision_model("mobilenet_v3_small", device="meta"))
    assert "cannot import torchvision's mobilenet_v3_small weights: tensor 0" in d.message
    assert "ours is conv1.weight [32, 3, 3, 3] of a conv" in d.message
    assert "torchvision's is features.0.0.weight [16, 3, 3, 3] of a conv" in d.message
    assert d.loc.file == str(SPECS / "mobilenet_v2.yaml") and d.loc.line > 0


def test_a_missing_relu6_is_caught_by_verify(write_spec):
    text = (SPECS / "mobilenet_v2.yaml").read_text().replace("      - relu6\n      - conv: {out: $out", "      - conv: {out: $out")
    with pytest.raises(resgraph.WeightsError) as e:
        import_model("torchvision:mobilenet_v2", write_spec(text), seed=0)
    assert "outputs differ" in e.value.message


def test_a_shortcut_that_runs_first_must_be_written_first(write_spec):
    # regnet's blocks compute proj(x) before f(x); an inserted Ws would run after the body instead
    text = (SPECS / "regnet_x_400mf.yaml").read_text()
    first = text[text.index("  first:"):text.index("  rest:")]
    path = write_spec(text.replace(first, "  first:\n    args: {w: null}\n    residual:\n      layers:\n"
                                          "        - body: {w: $w, stride: 2}\n      post: relu\n")
                      .replace("shortcut: error", "shortcut: projection"))
    d = import_refusal(path, torchvision_model("regnet_x_400mf", device="meta"))
    assert "tensor 6 in execution order differs (conv with stride 1 vs stride 2)" in d.message
    assert "ours is block1.body1.conv1.weight [32, 32, 1, 1] of a conv" in d.message
    assert "torchvision's is trunk_output.block1.block1-0.proj.0.weight [32, 32, 1, 1] of a conv" in d.message
    assert "another order" in d.hint and "`project` before the body" in d.hint
