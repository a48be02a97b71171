"""Transfer learning: torchvision's resnet18 imported into a 10-class spec with `--reinit fc`.

Everything but the head is imported, the head follows the spec's init:, and verification compares the
features (the head's input). The source is built with weights=None and a seed: nothing is downloaded.
The specs are copies of specs/resnet18.yaml at 64x64 (fast) with the head at 10 or 1000 classes.
"""
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")
from click.testing import CliRunner  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch import read_checkpoint  # noqa: E402
from resgraph.backends.torch.importer import import_model  # noqa: E402
from resgraph.backends.torch.torchvision import torchvision_model  # noqa: E402
from resgraph.cli import cli  # noqa: E402
from conftest import ROOT  # noqa: E402


def resnet18_spec(tmp_path, classes: int, name: str = "r18.yaml", swap: tuple[str, str] = ("", "")):
    """specs/resnet18.yaml with `classes` outputs, at 3x64x64, its text's `swap[0]` replaced by `swap[1]`."""
    text = (ROOT / "specs" / "resnet18.yaml").read_text()
    for old, new in (("linear: {id: fc, out: 1000}", f"linear: {{id: fc, out: {classes}}}"),
                     ("shape: [3, 224, 224]", "shape: [3, 64, 64]"), ("resize: 256, crop: 224", "resize: 73, crop: 64"),
                     ("labels: imagenet_classes.txt", ""), swap):
        assert old in text, old
        text = text.replace(old, new) if old else text
    path = tmp_path / name
    path.write_text(text)
    return path


def their_key(ours: str) -> str:
    """resgraph's inserted Ws is torchvision's downsample; every other key is spelt the same."""
    return ours.replace("shortcut.conv", "downsample.0").replace("shortcut.bn", "downsample.1")


def invoke(*args):
    return CliRunner().invoke(cli, ["import-weights", "torchvision:resnet18", *map(str, args)])


def test_reinit_fc_into_a_10_class_spec(tmp_path):
    spec, out = resnet18_spec(tmp_path, 10), tmp_path / "r18_10.safetensors"
    # without the flag: refused, and the message names the flag that works
    r = invoke("--spec", spec, "-o", out, "--seed", "1")
    assert r.exit_code == 1 and not out.exists(), r.output
    assert "fc.weight [10, 512]" in r.output and "[1000, 512]" in r.output and "add --reinit fc " in r.output
    # with it: every other tensor is torchvision's; fc has the spec's shape and its init
    r = invoke("--spec", spec, "-o", out, "--seed", "1", "--reinit", "fc")
    assert r.exit_code == 0, r.output
    assert "initialised 2 tensors by the spec's init: (--reinit fc) instead of importing: fc.weight [10, 512] " \
           "(torchvision:resnet18's fc.weight is [1000, 512])" in r.output
    assert "verified before the reinitialised layers: largest difference 0 between the inputs of fc" in r.output
    tensors, meta = read_checkpoint(str(out))
    theirs = torchvision_model("resnet18", seed=1).state_dict()
    imported = {k for k in tensors if not k.startswith("fc.")}
    assert {their_key(k) for k in imported} == set(theirs) - {"fc.weight", "fc.bias"}
    assert all(torch.equal(tensors[k], theirs[their_key(k)]) for k in imported)
    assert list(tensors["fc.weight"].shape) == [10, 512] and meta["reinit"] == "fc"
    fresh = resgraph.to_torch(str(spec), seed=1).state_dict()   # what `resgraph init --seed 1` writes
    assert torch.equal(tensors["fc.weight"], fresh["fc.weight"]) and torch.equal(tensors["fc.bias"], fresh["fc.bias"])
    assert not torch.equal(fresh["fc.weight"], resgraph.to_torch(str(spec), seed=2).state_dict()["fc.weight"])


def test_reinit_names_that_are_not_layers(tmp_path):
    spec, out = resnet18_spec(tmp_path, 10), tmp_path / "x.safetensors"
    r = invoke("--spec", spec, "-o", out, "--reinit", "fcc")
    assert r.exit_code == 1 and not out.exists()
    assert "--reinit: error:" in r.output and "has no layer 'fcc'" in r.output and "did you mean 'fc'?" in r.output
    r = invoke("--spec", spec, "-o", out, "--reinit", "fc,avgpool")
    assert r.exit_code == 1 and "'avgpool'" in r.output and "no weights to reinitialise" in r.output


def test_reinit_of_a_layer_that_fits(tmp_path):
    """A layer inside the network that matches theirs is reinitialised anyway: the comparison moves to its
    input, and the imported tensors that act only after it are listed as not verified."""
    spec = resnet18_spec(tmp_path, 1000)
    module, r = import_model("torchvision:resnet18", spec, seed=3, reinit=["layer4.1.conv2"])
    assert r["reinit"]["layer4.1.conv2.weight"] == {"shape": [512, 512, 3, 3], "by": "layer4.1.conv2",
                                                    "theirs": "layer4.1.conv2.weight", "their_shape": [512, 512, 3, 3]}
    assert r["verified_at"] == {"ours": "layer4.1.conv2", "theirs": "layer4.1.conv2"} and r["max_abs_diff"] == 0
    assert r["compared"] == {} and "fc.weight" in r["unverified"] and "layer4.1.conv1.weight" not in r["unverified"]
    theirs = torchvision_model("resnet18", seed=3).state_dict()
    ours = module.state_dict()
    assert torch.equal(ours["fc.weight"], theirs["fc.weight"])
    assert torch.equal(ours["layer4.1.conv2.weight"], resgraph.to_torch(str(spec), seed=3).state_dict()["layer4.1.conv2.weight"])


def test_a_difference_before_the_head_is_still_refused(tmp_path):
    """With the head reinitialised its output cannot be compared, but the features still are: a spec
    that differs without weights before the head (a sigmoid for the stem's relu) is refused."""
    spec = resnet18_spec(tmp_path, 10, swap=("- relu: {id: relu}", "- sigmoid: {id: relu}"))
    out = tmp_path / "x.safetensors"
    r = invoke("--spec", spec, "-o", out, "--reinit", "fc")
    assert r.exit_code == 1 and not out.exists()
    assert "outputs differ" in r.output and "(ours the input of fc, the input of its fc)" in r.output
