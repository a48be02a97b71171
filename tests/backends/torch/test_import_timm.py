"""timm's models as a weights source (timm:NAME): resnet50d into a ResNet-D spec, and what is refused.

Every test builds timm models with pretrained=False (random, seeded): nothing is downloaded. Without
timm installed (pip install 'resgraph[timm]'), only the tests of the error that says so run.
"""
import sys

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")

import resgraph  # noqa: E402
from resgraph.backends.torch.importer import import_model, import_weights  # noqa: E402
from resgraph.backends.torch.timm import timm_model  # noqa: E402
from conftest import ROOT, import_refusal, run_cli  # noqa: E402
from test_torchvision_import import assert_every_tensor_landed, assert_same_outputs, randomise_bn  # noqa: E402

try:
    import timm  # noqa: F401
    HAVE_TIMM = True
except ImportError:
    HAVE_TIMM = False
needs_timm = pytest.mark.skipif(not HAVE_TIMM, reason="timm is not installed (pip install 'resgraph[timm]'; "
                                                      "the dev extra installs it)")

RESNET50D = ROOT / "tests" / "import_specs" / "resnet50d.yaml"


@needs_timm
def test_resnet50d_outputs_equal_timms():
    model = randomise_bn(timm_model("resnet50d", seed=0))
    module = resgraph.to_torch(RESNET50D, init=False)
    report = import_weights(module, model)
    assert report["source"] == "timm:resnet50d" and report["unused"] == []
    assert report["tensors"] == len(model.state_dict())
    assert report["params"] == sum(p.numel() for p in model.parameters()) == resgraph.check(str(RESNET50D)).params
    assert report["mapping"]["stem2"] == "conv1.3" and report["mapping"]["bn1"] == "bn1"
    assert report["mapping"]["layer2.0.shortcut.conv"] == "layer2.0.downsample.1"   # after the avgpool, .0
    assert report["mapping"]["layer1.0.shortcut.conv"] == "layer1.0.downsample.1"   # stride 1: an Identity pool
    assert_every_tensor_landed(module, model, report)
    assert_same_outputs(module, model, size=64)


@needs_timm
def test_resnet50d_shortcut_must_pool_first(write_spec):
    # the same tensors with plain projection shortcuts: their 1x1 convs stride 2 where timm's pool does
    path = write_spec(RESNET50D.read_text().replace("shortcut: avgpool_projection", "shortcut: projection"))
    d = import_refusal(path, timm_model("resnet50d", device="meta"))
    assert "cannot import timm's resnet50d weights" in d.message and "(conv with stride 2 vs stride 1)" in d.message
    assert "ours is layer2.0.shortcut.conv.weight [512, 256, 1, 1] of a conv" in d.message
    assert "timm's is layer2.0.downsample.1.weight [512, 256, 1, 1] of a conv" in d.message
    assert d.loc.file == path and d.loc.line > 0   # the add the Ws was inserted for


@needs_timm
def test_a_resnet50_spec_does_not_take_resnet50d():
    d = import_refusal(ROOT / "specs" / "resnet50.yaml", timm_model("resnet50d", device="meta"))
    assert "tensor 0 in execution order differs (shapes differ)" in d.message
    assert "ours is conv1.weight [64, 3, 7, 7] of a conv, timm's is conv1.0.weight [32, 3, 3, 3] of a conv" in d.message
    assert d.loc.file == str(ROOT / "specs" / "resnet50.yaml")
    assert "320 tensors here, 332 in timm's resnet50d" in d.hint


@needs_timm
def test_unknown_timm_model():
    with pytest.raises(resgraph.WeightsError) as e:
        timm_model("resnet50_d")
    assert e.value.file == "timm:resnet50_d" and "unknown timm model 'resnet50_d'" in e.value.message
    assert "did you mean" in e.value.hint and "'resnet50d'" in e.value.hint
    assert timm_model("resnet50d.ra2_in1k", device="meta").default_cfg["tag"] == "ra2_in1k"   # a tag is a name too


@needs_timm
def test_timm_weights_file(tmp_path):
    from safetensors.torch import save_file
    model = randomise_bn(timm_model("resnet50d", seed=3), seed=3)
    path = tmp_path / "resnet50d.safetensors"     # what timm publishes on the Hugging Face hub
    save_file(model.state_dict(), path)
    module, r = import_model("timm:resnet50d", RESNET50D, weights_file=str(path))   # verify=True
    assert r["max_abs_diff"] <= 1e-5
    assert torch.equal(module.state_dict()["stem3.weight"], model.state_dict()["conv1.6.weight"])


@needs_timm
def test_import_weights_command_with_timm(tmp_path):
    from click.testing import CliRunner
    from resgraph.cli import cli
    out = tmp_path / "r50d.safetensors"
    r = CliRunner().invoke(cli, ["import-weights", "timm:resnet50d", "--spec", str(RESNET50D), "-o", str(out), "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert "332 tensors, 25,576,264 parameters from timm:resnet50d (random init, seed 2); verified" in r.output
    from resgraph.backends.torch import read_checkpoint
    tensors, meta = read_checkpoint(str(out))
    assert meta["source"] == "timm:resnet50d (random init, seed 2)" and meta["untrained"] == "true"
    assert torch.equal(tensors["layer3.0.shortcut.bn.running_var"],
                       timm_model("resnet50d", seed=2).state_dict()["layer3.0.downsample.2.running_var"])
    bad = tmp_path / "x.safetensors"
    r = CliRunner().invoke(cli, ["import-weights", "timm:resnet50d", "--spec", str(ROOT / "specs" / "resnet50.yaml"),
                                 "-o", str(bad)])
    assert r.exit_code == 1 and "timm's is conv1.0.weight" in r.output and not bad.exists()


@needs_timm
def test_pretrained_offline_is_a_clean_error(tmp_path, monkeypatch):
    # no network for the Hugging Face hub (offline mode, an empty cache): a DownloadError that says what to do
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    p = run_cli("import-weights", "timm:resnet18", "--spec", "specs/resnet18.yaml", "-o", str(tmp_path / "r.safetensors"),
                "--pretrained")
    assert p.returncode == 1, p.stderr
    assert "timm:resnet18: error: could not download timm's pretrained resnet18 weights" in p.stderr
    assert "--weights-file" in p.stderr and "https://huggingface.co/timm/resnet18" in p.stderr
    assert not (tmp_path / "r.safetensors").exists()


def test_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # what `import timm` meets where it is not installed
    with pytest.raises(resgraph.WeightsError) as e:
        timm_model("resnet50d")
    assert e.value.file == "timm:resnet50d" and "timm is not installed" in e.value.message
    assert "pip install 'resgraph[timm]'" in e.value.hint
    from click.testing import CliRunner
    from resgraph.cli import cli
    r = CliRunner().invoke(cli, ["import-weights", "timm:resnet50d", "--spec", str(RESNET50D), "-o", "unused.safetensors"])
    assert r.exit_code == 1 and "timm is not installed" in r.output and "pip install" in r.output
