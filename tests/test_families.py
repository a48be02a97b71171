"""The residual families people train, as shipped specs: SE-ResNet-50 (timm's seresnet50), RegNetY-400MF,
EfficientNet-B0, MobileNetV3-Small and ConvNeXt-T (torchvision's). Their weights import by structure
and the outputs then equal the library's, with random weights and randomised normalisation statistics
and affine parameters; the matching pairs ConvNeXt's nn.Linear on channels-last maps with the spec's
1x1 convs, its (C, 1, 1) layer scale with the `scale` op's [C], and layer norms across layouts, and
refuses what does not correspond. Parameter and MAC counts are tests/ops/test_counts.py's; ONNX Runtime
parity is tests/backends/onnx/test_onnx_backend.py's (every shipped spec); compiled with bn folded, against
the torchvision model itself, it is checked here for MobileNetV3-Small (bn eps 1e-3) and EfficientNet-B0
(eps 1e-5), so that a fold with either eps in place of the node's own shows.

Outputs are compared at 64x64 (every family is valid there, and it is ~12x cheaper than 224x224);
matching alone runs on the meta device.
"""
import re

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")
from torch import nn  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch.importer import import_weights  # noqa: E402
from resgraph.backends.torch.importer import build  # noqa: E402
from resgraph.backends.torch.sources import parse_source  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402
from conftest import ROOT, import_refusal, run_cli  # noqa: E402
from test_torchvision_import import assert_same_outputs, randomise_bn  # noqa: E402

FAMILIES = {   # shipped spec -> the model it reproduces
    "se_resnet50": "timm:seresnet50",
    "regnet_y_400mf": "torchvision:regnet_y_400mf",
    "efficientnet_b0": "torchvision:efficientnet_b0",
    "mobilenet_v3_small": "torchvision:mobilenet_v3_small",
    "convnext_tiny": "torchvision:convnext_tiny",
}


def spec(name):
    return ROOT / "specs" / f"{name}.yaml"


def reference(source, device=None, seed=0):
    if source.startswith("timm:"):
        pytest.importorskip("timm", reason="timm is not installed (pip install 'resgraph[timm]')")
    return build(parse_source(source), seed=seed, device=device)


def randomise(model, seed=0):
    """randomise_bn, and the same for what else a wrong pairing would hide: layer and group norms'
    affine parameters, biases (torchvision starts many at 0) and layer scales (ConvNeXt's start at 1e-6,
    which leaves a residual branch almost without effect on the output)."""
    randomise_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            for name, p in m.named_parameters(recurse=False):
                if name in ("layer_scale", "gamma"):
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_imported_weights_give_the_references_outputs(name):
    ref = randomise(reference(FAMILIES[name]))
    module = resgraph.to_torch(spec(name), init=False)
    report = import_weights(module, ref)
    assert report["source"] == FAMILIES[name] and report["unused"] == []
    assert report["tensors"] == len(ref.state_dict()) == len(report["keys"])
    assert report["params"] == sum(p.numel() for p in ref.parameters()) == resgraph.check(str(spec(name))).params
    theirs = ref.state_dict()
    for ours, t in module.state_dict().items():   # every tensor, in our layout (a [C] layer scale, a 1x1 conv)
        assert torch.equal(t, theirs[report["keys"][ours]].reshape(t.shape)), ours
    assert_same_outputs(module, ref, size=64)


MAPPED = {   # a few of our layers -> the reference's (report["mapping"])
    "se_resnet50": {"conv1": "conv1", "layer1.0.se.fc1": "layer1.0.se.fc1", "layer4.2.se.fc2": "layer4.2.se.fc2",
                    "layer2.0.shortcut.conv": "layer2.0.downsample.0", "fc": "fc"},
    "regnet_y_400mf": {"stem.conv": "stem.0", "block2.0.proj.conv": "trunk_output.block2.block2-0.proj.0",
                       "block2.0.f.conv2": "trunk_output.block2.block2-0.f.b.0",
                       "block2.1.f.se.fc1": "trunk_output.block2.block2-1.f.se.fc1",
                       "block4.5.f.bn3": "trunk_output.block4.block4-5.f.c.1", "fc": "fc"},
    "efficientnet_b0": {"features0.conv": "features.0.0", "features1.0.block.se.fc1": "features.1.0.block.1.fc1",
                        "features2.1.block.conv2": "features.2.1.block.1.0",
                        "features2.1.block.se.fc2": "features.2.1.block.2.fc2", "features8.bn": "features.8.1",
                        "classifier": "classifier.1"},
    "mobilenet_v3_small": {"features1.block.se.fc1": "features.1.block.1.fc1",
                           "features4.block.se.fc2": "features.4.block.2.fc2",
                           "features11.block.bn3": "features.11.block.3.1", "features12.conv": "features.12.0",
                           "classifier0": "classifier.0", "classifier3": "classifier.3"},
    "convnext_tiny": {"features0.conv": "features.0.0", "features0.norm": "features.0.1",
                      "features1.0.block.dwconv": "features.1.0.block.0",
                      "features1.0.block.norm": "features.1.0.block.2",
                      "features1.0.block.pwconv1": "features.1.0.block.3",
                      "features1.0.block.pwconv2": "features.1.0.block.5",
                      "features1.0.layer_scale": "features.1.0", "features2.conv": "features.2.1",
                      "classifier.norm": "classifier.0", "classifier.fc": "classifier.2"},
}


@pytest.mark.parametrize("name", FAMILIES)
def test_mapping_reads_like_the_reference(name):
    with torch.device("meta"):
        module = resgraph.to_torch(spec(name), init=False)
    report = import_weights(module, reference(FAMILIES[name], device="meta"))
    assert {k: report["mapping"][k] for k in MAPPED[name]} == MAPPED[name]
    if name == "convnext_tiny":
        assert report["keys"]["features1.0.layer_scale.weight"] == "features.1.0.layer_scale"
    if name in ("efficientnet_b0", "convnext_tiny"):   # a stage is a repeat: copy K of featuresS is features.S.K
        blocks = {k: v for k, v in report["mapping"].items() if re.match(r"features\d+\.\d+\.", k)}
        assert len(blocks) > 50
        assert not {k: v for k, v in blocks.items()
                    if not (v + ".").startswith(re.sub(r"^features(\d+)\.(\d+)\..*", r"features.\1.\2.", k))}


def test_stochastic_depth_rates_are_the_references():
    """drop_path is the identity at inference, so outputs cannot show it: the rates are compared, block
    by block, with the StochasticDepth ('row' mode: per sample) of the blocks that use it."""
    from torchvision.models.efficientnet import MBConv
    for name, uses in (("efficientnet_b0", lambda m: isinstance(m, MBConv) and m.use_res_connect),
                       ("convnext_tiny", lambda m: type(m).__name__ == "CNBlock")):
        ref = reference(FAMILIES[name], device="meta")
        want = [m.stochastic_depth.p for m in ref.modules() if uses(m)]
        assert {m.stochastic_depth.mode for m in ref.modules() if uses(m)} == {"row"}
        got = [n.args["p"] for n in resgraph.check(str(spec(name))).graph.nodes if n.op == "drop_path"]
        assert got == pytest.approx(want, abs=1e-12) and len(got) == {"efficientnet_b0": 9, "convnext_tiny": 18}[name]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_bn_folds_into_the_conv_before_it(name):
    """For ONNX: every bn (an explicit projection's too) folds into its conv, and drop_path goes."""
    import numpy as np
    from resgraph.ops.count import state_dict_shapes
    g = resgraph.check(str(spec(name))).graph
    w = {k: np.ones(s, np.float32) for k, s in state_dict_shapes(g).items()}
    unfolded, _ = for_inference(g, w, fold=False)
    folded, _ = for_inference(g, w)
    bns = [n for n in unfolded.nodes if n.op == "bn"]
    assert all(unfolded[n.inputs[0]].op == "conv" for n in bns)
    assert len(bns) == {"se_resnet50": 53, "regnet_y_400mf": 53, "efficientnet_b0": 49, "mobilenet_v3_small": 34,
                        "convnext_tiny": 0}[name]
    assert not [n.path for n in folded.nodes if n.op in ("bn", "drop_path", "project")]


def images(n, seed):
    """n image-like inputs, normalised with ImageNet's mean and std: pixels in [0, 1] whose colour differs
    from image to image (noise alone averages to the same pooled features, and outputs that no input
    changes would leave the folded weights untested)."""
    import numpy as np
    r = np.random.default_rng(seed)
    rgb = r.random((n, 3, 224, 224)) * 0.5 + r.random((n, 3, 1, 1)) * 0.5
    mean, std = np.reshape([0.485, 0.456, 0.406], (3, 1, 1)), np.reshape([0.229, 0.224, 0.225], (3, 1, 1))
    return ((rgb - mean) / std).astype(np.float32)


def calibrate_bn(model, seed=0):
    """Running statistics as a trained model has them, those of what each bn sees on 8 images (the bns
    alone in train mode, momentum None: the batch's own; drop_path and dropout stay off, so it is
    deterministic), and random gammas and betas. Unlike randomise_bn's (variances of 0.5 to 1.5 on
    activations of another scale), they keep the output a function of the input, and where an activation's
    variance is small (after a depthwise conv), eps shows. Fewer images give statistics that the test's
    images overflow, and outputs of 500 where float32 alone differs by 1e-4 of them."""
    g = torch.Generator().manual_seed(seed)
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    model.eval()
    with torch.no_grad():
        for m in momenta:
            m.reset_running_stats()
            m.momentum = None
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.train()
        model(torch.from_numpy(images(8, seed + 100)))
        for m, momentum in momenta.items():
            m.momentum = momentum
    return model.eval()


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_compiled_with_folding_onnx_runtime_gives_torchvisions_outputs(name, tmp_path):
    """torchvision's model (random, seeded; bn statistics calibrated) -> import by structure -> a
    checkpoint -> compile (bn folded with each node's own eps: 1e-3 throughout MobileNetV3, 1e-5 in
    EfficientNet-B0) -> ONNX Runtime, against torchvision's eval-mode output. Relative to the largest
    output, as random weights give logits of any scale: ORT and torch agree within ~1e-6 of it, and a
    fold with the other family's eps is off by 1x (EfficientNet-B0) to 50x (MobileNetV3) of it."""
    import numpy as np
    ort = pytest.importorskip("onnxruntime")
    from safetensors.torch import save_file

    from resgraph.compile import compile_spec
    tv = calibrate_bn(reference(FAMILIES[name]))
    assert {m.eps for m in tv.modules() if isinstance(m, nn.BatchNorm2d)} == {
        {"efficientnet_b0": 1e-5, "mobilenet_v3_small": 1e-3}[name]}
    module = resgraph.to_torch(spec(name), init=False)
    import_weights(module, tv)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "w.safetensors"))
    c = compile_spec(str(spec(name)), weights=str(tmp_path / "w.safetensors"), out=str(tmp_path / name))
    assert c.manifest.folded and c.manifest.preprocess["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = images(2, 0)
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / name / "model.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert got.shape == want.shape == (2, 1000)
    assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()   # the input matters
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (np.abs(got - want).max(), np.abs(want).max())


def test_the_command_imports_convnext():
    """The command line, end to end, on the family that needs the new pairings (random init: no download)."""
    out = ROOT / "compiled" / "test_families_convnext.safetensors"
    try:
        p = run_cli("import-weights", "torchvision:convnext_tiny", "--spec", "specs/convnext_tiny.yaml", "-o", str(out),
                    timeout=300)
        assert p.returncode == 0, p.stderr
        assert "182 tensors, 28,589,128 parameters from torchvision:convnext_tiny" in p.stdout and "verified" in p.stdout
    finally:
        out.unlink(missing_ok=True)


# --- docs/families.md shows real outputs and the specs' own lines -------------------------------

DOC = (ROOT / "docs" / "families.md").read_text()


def test_the_docs_summaries_are_real():
    blocks = re.findall(r"```text\n\$ resgraph (summary [^\n]*)\n(.*?)```", DOC, re.S)
    assert sorted(args.split()[1] for args, _ in blocks) == sorted(f"specs/{n}.yaml" for n in FAMILIES)
    for args, expected in blocks:
        p = run_cli(*args.split())
        assert p.returncode == 0, p.stderr
        assert "\n".join(line.rstrip() for line in p.stdout.splitlines()) == expected.rstrip("\n"), args


def test_the_docs_excerpts_are_the_specs_lines():
    lines = {line for n in FAMILIES for line in spec(n).read_text().splitlines()}
    excerpts = re.findall(r"```yaml\n(.*?)```", DOC, re.S)
    assert len(excerpts) == 5
    for text in excerpts:
        assert not [line for line in text.splitlines() if line not in lines]


# --- what does not correspond is refused, naming both sides --------------------------------------

def refused(text, source, write_spec):
    return import_refusal(write_spec(text), reference(source, device="meta")).message


def test_a_linear_pairs_only_with_a_pointwise_conv(write_spec):
    text = spec("convnext_tiny").read_text().replace('pwconv1, out: "$dim * 4", kernel: 1',
                                                     'pwconv1, out: "$dim * 4", kernel: 3')
    msg = refused(text, "torchvision:convnext_tiny", write_spec)
    assert ("tensor 8 in execution order differs (a conv vs a linear (a conv pairs with a linear only as an "
            "unpadded 1x1 conv") in msg
    assert "this one has kernel 3, stride 1, dilation 1, groups 1)" in msg
    assert "ours is features1.0.block.pwconv1.weight [384, 96, 3, 3] of a conv" in msg
    assert "torchvision's is features.1.0.block.3.weight [384, 96] of a linear" in msg


def test_layer_norms_pair_by_eps_and_a_missing_layer_scale_shows(write_spec):
    text = spec("convnext_tiny").read_text()
    msg = refused(text.replace("  layernorm: {eps: 1.0e-6}\n", "  layernorm: {eps: 1.0e-5}\n"),
                  "torchvision:convnext_tiny", write_spec)
    assert "tensor 2 in execution order differs (layernorm with eps 1e-05 vs eps 1e-06)" in msg
    assert "ours is features0.norm.weight [96] of a layernorm" in msg and "features.0.1.weight [96] of a layernorm" in msg
    msg = refused(text.replace("        - scale: {id: layer_scale, init: 1.0e-6}", ""), "torchvision:convnext_tiny",
                  write_spec)
    assert "tensor 12 in execution order differs (a conv vs a scale)" in msg
    assert "torchvision's is features.1.0.layer_scale [96, 1, 1] of a scale" in msg


SMALL = """resgraph: 1
name: small
input: {shape: [3, 8, 8]}
layers:
  - conv: {out: 16, kernel: 3, bias: false}
  - groupnorm: {groups: 4}
  - relu
  - scale
  - global_avgpool
  - flatten
  - linear: {out: 10}
"""


class Small(nn.Module):
    """The spec above, as PyTorch code might write it: timm's LayerScale2d, the classifier as a 1x1 conv."""

    def __init__(self, groups: int):
        super().__init__()
        from timm.layers import LayerScale2d
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, 16)
        self.ls = LayerScale2d(16)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x):
        x = self.ls(torch.relu(self.norm(self.conv(x))))
        return self.head(x.mean((2, 3), keepdim=True)).flatten(1)


def test_group_norm_timms_layer_scale_and_a_1x1_conv_head_pair(write_spec):
    """Kinds no shipped spec pairs: GroupNorm (groups and eps must agree), timm's LayerScale2d (its
    `gamma`), and a linear layer with a 1x1 conv on the pooled map, the other way round."""
    pytest.importorskip("timm", reason="timm is not installed (pip install 'resgraph[timm]')")
    torch.manual_seed(0)
    model = randomise(Small(groups=4))
    module = resgraph.to_torch(write_spec(SMALL), init=False)
    report = import_weights(module, model, verify=True)
    assert report["keys"] == {"conv1.weight": "conv.weight", "groupnorm1.weight": "norm.weight",
                              "groupnorm1.bias": "norm.bias", "scale1.weight": "ls.gamma",
                              "linear1.weight": "head.weight", "linear1.bias": "head.bias"}
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        want, got = model(x), module.eval()(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    with pytest.raises(resgraph.WeightsError) as e:
        import_weights(resgraph.to_torch(write_spec(SMALL), init=False), Small(groups=8))
    assert "tensor 1 in execution order differs (groupnorm with groups 4 vs groups 8)" in e.value.message


GROUPED = """resgraph: 1
name: grouped
input: {shape: [3, 8, 8]}
layers:
  - conv: {id: stem, out: 16, kernel: 3, bias: false}
  - conv: {id: a, out: 16, kernel: 3, bias: false}
  - concat: {from: [stem]}
  - conv: {id: b, out: 16, kernel: 3, groups: 2, bias: false}
  - global_avgpool
  - flatten
  - linear: {id: fc, out: 10}
"""


class Dense(nn.Module):
    """GROUPED as PyTorch code might write it (`dense=True`: b reads [a, stem], 32 channels, in 2 groups),
    or without the concat (`dense=False`: b reads a alone, 16 channels, ungrouped). b's weight is
    [16, 16, 3, 3] either way, [out, in / groups, k, k]: only `groups` tells the two apart."""

    def __init__(self, dense: bool):
        super().__init__()
        self.dense = dense
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.a = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b = nn.Conv2d(32 if dense else 16, 16, 3, padding=1, groups=2 if dense else 1, bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        s = self.stem(x)
        a = self.a(s)
        return self.fc(self.b(torch.cat([a, s], 1) if self.dense else a).mean((2, 3)))


def test_a_grouped_conv_pairs_only_with_one_of_the_same_groups(write_spec):
    torch.manual_seed(0)
    spec_path = write_spec(GROUPED)
    module = resgraph.to_torch(spec_path, init=False)
    report = import_weights(module, Dense(dense=True), verify=True)   # the same computation: it imports
    assert report["mapping"] == {"stem": "stem", "a": "a", "b": "b", "fc": "fc"} and report["max_abs_diff"] <= 1e-5
    # the same tensor shapes, another computation: refused by the pairing itself, naming the groups
    with torch.device("meta"):
        d = import_refusal(spec_path, Dense(dense=False))
    assert "tensor 2 in execution order differs (conv with groups 2 vs groups 1)" in d.message
    assert "ours is b.weight [16, 16, 3, 3] of a conv, Dense's is b.weight [16, 16, 3, 3] of a conv" in d.message
    assert GROUPED.splitlines()[d.loc.line - 1].strip() == "- conv: {id: b, out: 16, kernel: 3, groups: 2, bias: false}"
    plain = GROUPED.replace("  - concat: {from: [stem]}\n", "").replace("groups: 2, ", "")
    with torch.device("meta"):
        d = import_refusal(write_spec(plain, "plain.yaml"), Dense(dense=True))
    assert "tensor 2 in execution order differs (conv with groups 1 vs groups 2)" in d.message
