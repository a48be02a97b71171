"""torchvision's weights imported into the shipped specs by structure, and what it refuses.

Every test builds torchvision models with weights=None (random, seeded): nothing is downloaded.
randomise_bn and assert_same_outputs are shared with tests/test_import_*.py.
"""
import socket
import sys

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")
from torch import nn  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch.importer import import_torchvision, import_weights  # noqa: E402
from resgraph.backends.torch.torchvision import torchvision_model  # noqa: E402
from conftest import ROOT, import_refusal  # noqa: E402

# the shipped specs, each torchvision's model of the same name
SHIPPED = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d",
           "densenet121")
SPEC = {name: ROOT / "specs" / f"{name}.yaml" for name in SHIPPED}

# published by torchvision (sum of parameters; the weights' meta "_ops" in GMACs): conv + linear MACs
PUBLISHED = {
    "wide_resnet50_2": (68_883_240, 11_398_021_120, 4),
    "resnext50_32x4d": (25_028_904, 4_230_479_872, 4),
    "densenet121": (7_978_856, 2_834_161_664, 0),
}


def randomise_bn(model, seed=0):
    """Non-trivial bn: random affine and running statistics, so a bn paired with the wrong one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model.eval()


def assert_same_outputs(module, model, size, batch=2):
    """Both in eval mode on one random batch at size x size: equal within 1e-5 of the largest output.
    Relative, because random weights and bn statistics give logits of any scale; the two compute the
    same float32 operations in the same order, so they normally agree exactly."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.eval()(x)
        got = module.eval()(x)
    assert got.shape == want.shape == (batch, 1000)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()


def assert_every_tensor_landed(module, model, report):
    """Every one of ours holds the tensor of theirs that the mapping names (running statistics too)."""
    theirs = model.state_dict()
    for ours, t in module.state_dict().items():
        layer, _, kind = ours.rpartition(".")
        assert torch.equal(t, theirs[f"{report['mapping'][layer]}.{kind}"]), ours


@pytest.mark.parametrize("name", SHIPPED)
def test_imported_weights_give_torchvisions_outputs(name):
    tv = randomise_bn(torchvision_model(name, seed=0))
    module = resgraph.to_torch(SPEC[name], init=False)
    report = import_weights(module, tv)
    assert report["model"] == name and report["source"] == f"torchvision:{name}" and report["unused"] == []
    assert report["tensors"] == len(tv.state_dict())
    assert report["params"] == sum(p.numel() for p in tv.parameters()) == resgraph.check(str(SPEC[name])).params
    assert_every_tensor_landed(module, tv, report)
    assert_same_outputs(module, tv, size=64)   # every shipped family is valid at 64x64, and 12x cheaper


def test_mapping_reads_like_torchvision():
    _, r = import_torchvision("resnet50", SPEC["resnet50"], seed=0, verify=False)
    m = r["mapping"]
    assert list(m.items())[:3] == [("conv1", "conv1"), ("bn1", "bn1"), ("layer1.0.conv1", "layer1.0.conv1")]
    assert m["layer2.0.shortcut.conv"] == "layer2.0.downsample.0"
    assert m["layer2.0.shortcut.bn"] == "layer2.0.downsample.1"
    assert list(m.items())[-1] == ("fc", "fc")
    _, r = import_torchvision("densenet121", SPEC["densenet121"], seed=0, verify=False)
    m = r["mapping"]
    assert m["conv0"] == "features.conv0" and m["norm0"] == "features.norm0"
    assert m["denseblock1.0.norm1"] == "features.denseblock1.denselayer1.norm1"
    assert m["denseblock4.15.conv2"] == "features.denseblock4.denselayer16.conv2"
    assert m["transition3.conv"] == "features.transition3.conv"
    assert m["norm5"] == "features.norm5" and m["classifier"] == "classifier"


@pytest.mark.parametrize("name", PUBLISHED)
def test_new_specs_reproduce_published_figures(name):
    params, macs, n_ws = PUBLISHED[name]
    c = resgraph.check(str(SPEC[name]))
    assert (c.params, c.macs) == (params, macs)
    assert sum(p.numel() for p in torchvision_model(name, seed=0).parameters()) == params
    assert len(c.graph.projections) == n_ws
    assert c.graph.nodes[0].shape == (3, 224, 224) and c.graph[c.graph.output].shape == (1000,)
    assert not c.warnings


def test_densenet_concatenates_previous_features_first():
    g = resgraph.check(str(SPEC["densenet121"])).graph
    cat = g["denseblock1.0.concat1"]
    assert cat.op == "concat" and cat.inputs == ("pool0", "denseblock1.0.conv2")
    assert g["denseblock1.5.concat1"].shape == (256, 56, 56) and g["transition1.pool"].shape == (128, 28, 28)
    assert g["norm5"].shape == (1024, 7, 7)


RENAMES = [("conv1", "stem"), ("bn1", "stem_bn"), ("id: relu}", "id: stem_relu}"), ("id: maxpool", "id: stem_pool"),
           ("layer1", "stage1"), ("layer2", "stage2"), ("layer3", "stage3"), ("layer4", "stage4"),
           ("id: avgpool", "id: pool"), ("fc", "head"), ("basic", "block")]


def respelled(name, *edits):
    text = SPEC[name].read_text()
    for a, b in edits:
        assert a in text, a
        text = text.replace(a, b)
    return text


def test_a_spec_with_other_ids_imports(write_spec):
    path = write_spec(respelled("resnet18", *RENAMES))
    paths = {n.path for n in resgraph.check(path).graph.nodes}
    assert {"stem", "stage2.0.shortcut.conv", "head"} <= paths and "conv1" not in paths
    module, r = import_torchvision("resnet18", path, seed=0)   # verify=True: outputs agree too
    assert r["max_abs_diff"] is not None and r["max_abs_diff"] <= 1e-5
    assert r["mapping"]["stem"] == "conv1" and r["mapping"]["stage3.0.shortcut.bn"] == "layer3.0.downsample.1"
    tv = torchvision_model("resnet18", seed=0)
    assert torch.equal(module.state_dict()["stage4.1.conv2.weight"], tv.state_dict()["layer4.1.conv2.weight"])


def test_resnet18_weights_do_not_fit_resnet34():
    with pytest.raises(resgraph.WeightsError) as e:
        import_torchvision("resnet18", SPEC["resnet34"], seed=0)
    (d,) = e.value.diagnostics
    assert "tensor 30 in execution order differs (shapes differ)" in d.message
    assert "ours is layer1.2.conv1.weight [64, 64, 3, 3] of a conv" in d.message
    assert "torchvision's is layer2.0.conv1.weight [128, 64, 3, 3] of a conv" in d.message
    assert "differs from torchvision's resnet18" in d.hint
    assert d.loc.file == str(SPEC["resnet34"]) and d.loc.line > 0   # the body's conv line


def test_a_resnet18_spec_does_not_take_resnet34():
    # matching alone (it fails before anything is copied or run): both models on the meta device
    d = import_refusal(SPEC["resnet18"], torchvision_model("resnet34", device="meta"))
    assert "cannot import torchvision's resnet34 weights: tensor 30" in d.message
    assert "ours is layer2.0.conv1.weight [128, 64, 3, 3] of a conv" in d.message
    assert "torchvision's is layer1.2.conv1.weight [64, 64, 3, 3] of a conv" in d.message
    assert "122 tensors here, 218 in torchvision's resnet34" in d.hint
    assert d.loc.file == str(SPEC["resnet18"])   # at the basic block's first conv, which layer2.0.conv1 is
    assert SPEC["resnet18"].read_text().splitlines()[d.loc.line - 1].strip() == "- conv: {out: $out, kernel: 3, stride: $stride}"


def test_one_channel_count_changed(write_spec):
    path = write_spec(respelled("resnet18", ("out: 128, repeat: 2", "out: 96, repeat: 2")))
    module = resgraph.to_torch(path, init=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(resgraph.WeightsError) as e:
        import_weights(module, torchvision_model("resnet18", seed=0))
    (d,) = e.value.diagnostics
    assert "ours is layer2.0.conv1.weight [96, 64, 3, 3]" in d.message
    assert "torchvision's is layer2.0.conv1.weight [128, 64, 3, 3]" in d.message
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())   # nothing copied


def test_a_stride_in_another_place_is_refused(write_spec):
    # same tensors everywhere (the Ws of layer2.0 becomes stride 1), but layer2.0's first conv has stride 1
    path = write_spec(respelled("resnet18", ("out: 128, repeat: 2, first: {stride: 2}", "out: 128, repeat: 2")))
    with pytest.raises(resgraph.WeightsError) as e:
        import_torchvision("resnet18", path, seed=0)
    assert "layer2.0.conv1.weight" in e.value.message and "stride 1 vs stride 2" in e.value.message


def test_a_difference_without_weights_is_caught_by_verify(write_spec):
    path = write_spec(respelled("resnet18", ("        - relu\n", "        - gelu\n")))
    with pytest.raises(resgraph.WeightsError) as e:
        import_torchvision("resnet18", path, seed=0)
    assert "outputs differ" in e.value.message and "without weights" in e.value.hint
    _, r = import_torchvision("resnet18", path, seed=0, verify=False)   # the tensors themselves fit
    assert r["max_abs_diff"] is None


def test_unknown_model_name():
    with pytest.raises(resgraph.WeightsError) as e:
        torchvision_model("resnet_50")
    assert e.value.file == "torchvision:resnet_50"
    assert "unknown torchvision model 'resnet_50'" in e.value.message and "did you mean 'resnet50'" in e.value.hint
    with pytest.raises(resgraph.WeightsError) as e:
        import_torchvision("densenet12", SPEC["densenet121"])
    assert "did you mean 'densenet121'" in e.value.hint
    with pytest.raises(resgraph.WeightsError) as e:   # a detection model is not a classifier
        torchvision_model("fasterrcnn_resnet50_fpn")
    assert "unknown torchvision model" in e.value.message


def test_any_torchvision_classifier_builds():
    from resgraph.backends.torch.torchvision import model_names
    names = model_names()
    assert {"resnet18", "densenet121", "mobilenet_v2", "vgg11_bn", "regnet_x_400mf", "vit_b_16"} <= set(names)
    m = torchvision_model("mnasnet0_5", device="meta")   # not in any list of ours: any classifier builds
    assert type(m).__name__ == "MNASNet" and next(m.parameters()).is_meta


def test_unknown_source():
    from resgraph.backends.torch.importer import import_model
    with pytest.raises(resgraph.WeightsError) as e:
        import_model("torchvison:resnet18", SPEC["resnet18"])
    assert "unknown weights source 'torchvison:resnet18'" in e.value.message
    assert "did you mean 'torchvision'" in e.value.hint and "timm:NAME" in e.value.hint


def test_pretrained_without_internet_is_a_clean_error(tmp_path, monkeypatch):
    # simulate a machine without network (no DNS), with an empty torch.hub cache: fails at once, never hangs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(resgraph.DownloadError) as e:
        torchvision_model("resnet18", pretrained=True)
    assert "could not download torchvision's pretrained resnet18 weights" in e.value.message
    assert "internet" in e.value.hint and "--weights-file" in e.value.hint
    assert "https://download.pytorch.org/models/resnet18-" in e.value.hint
    assert socket.getdefaulttimeout() is None   # restored


def test_weights_file(tmp_path):
    tv = randomise_bn(torchvision_model("resnet18", seed=3), seed=3)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    loaded = torchvision_model("resnet18", weights_file=str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tv.state_dict().values(), strict=True))
    module, r = import_torchvision("resnet18", SPEC["resnet18"], weights_file=str(path))
    assert r["max_abs_diff"] <= 1e-5
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), tv.state_dict().values(), strict=True))


def test_densenet_weights_file_with_torchvisions_published_names(tmp_path):
    # torchvision's published DenseNet .pth files say norm.1 / conv.2; torchvision renames them on load
    tv = torchvision_model("densenet121", seed=0)
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in tv.state_dict().items()
              if not k.endswith("num_batches_tracked")}   # as old as that: no num_batches_tracked either
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121.pth"
    torch.save(legacy, path)
    loaded = torchvision_model("densenet121", weights_file=str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tv.state_dict().values(), strict=True))


def test_bad_weights_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(resgraph.WeightsError) as e:
        torchvision_model("resnet18", weights_file=str(junk))
    assert e.value.file == str(junk) and "not a readable PyTorch weights file" in e.value.message
    with pytest.raises(resgraph.PathError) as e:   # the OS refuses the path: not the weights' fault
        torchvision_model("resnet18", weights_file=str(tmp_path / "missing.pth"))
    assert "no such weights file" in e.value.message
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision_model("resnet34", seed=0).state_dict(), other)
    with pytest.raises(resgraph.WeightsError) as e:
        torchvision_model("resnet18", weights_file=str(other))
    assert "does not fit torchvision's resnet18" in e.value.message
    with pytest.raises(resgraph.OptionError) as e:
        torchvision_model("resnet18", pretrained=True, weights_file=str(other))
    assert "not both" in e.value.message and e.value.file == "--pretrained"


def test_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(resgraph.WeightsError) as e:
        torchvision_model("resnet18")
    assert "torchvision is not installed" in e.value.message
    assert "pip install 'resgraph[torchvision]'" in e.value.hint


def test_import_weights_command(tmp_path):
    from conftest import run_cli
    out = tmp_path / "r18.safetensors"
    p = run_cli("import-weights", "torchvision:resnet18", "--spec", "specs/resnet18.yaml", "-o", str(out), "--seed", "1")
    assert p.returncode == 0, p.stderr
    assert "11,689,512 parameters from torchvision:resnet18 (random init, seed 1)" in p.stdout
    from resgraph.backends.torch import read_checkpoint
    tensors, meta = read_checkpoint(str(out))
    assert meta["untrained"] == "true" and meta["source"].startswith("torchvision:resnet18")
    tv = torchvision_model("resnet18", seed=1)
    assert torch.equal(tensors["layer2.0.shortcut.conv.weight"], tv.state_dict()["layer2.0.downsample.0.weight"])
    # the refusals in process (click's runner): a subprocess each would spend seconds importing torch
    from click.testing import CliRunner
    from resgraph.cli import cli
    bad = tmp_path / "x.safetensors"
    r = CliRunner().invoke(cli, ["import-weights", "torchvision:resnet18", "--spec", str(SPEC["resnet34"]), "-o", str(bad)])
    assert r.exit_code == 1 and "differs" in r.output and not bad.exists()
    r = CliRunner().invoke(cli, ["import-weights", "keras:resnet18", "--spec", str(SPEC["resnet18"]), "-o", str(bad)])
    assert r.exit_code == 1 and "write torchvision:NAME or timm:NAME" in r.output and not bad.exists()
