"""Weight import pairs tensors in the order the forward uses them, not the order they were registered.

Real torchvision models, rearranged with nn.Module's own API; meta-device models where only the
order is under test.
"""
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("torchvision", reason="torchvision is not installed (pip install 'resgraph[torchvision]')")
from torch import nn  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch.execution_order import execution_order  # noqa: E402
from resgraph.backends.torch.importer import import_weights  # noqa: E402
from resgraph.backends.torch.torchvision import torchvision_model  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_torchvision_import import assert_every_tensor_landed, assert_same_outputs, randomise_bn  # noqa: E402


def register_first(block: nn.Module, name: str) -> None:
    """Re-register `block`'s children with `name` first: its state dict then lists that child first,
    while forward, which reads the attributes, computes exactly what it did."""
    children = dict(block.named_children())
    for n in children:
        delattr(block, n)
    block.add_module(name, children.pop(name))
    for n, child in children.items():
        block.add_module(n, child)


def test_a_shortcut_registered_before_its_body_imports():
    tv = randomise_bn(torchvision_model("resnet18", seed=0))
    for stage in (tv.layer2, tv.layer3, tv.layer4):
        register_first(stage[0], "downsample")
    assert [k for k in tv.state_dict() if k.startswith("layer2.0.")][0] == "layer2.0.downsample.0.weight"
    module = resgraph.to_torch(ROOT / "specs" / "resnet18.yaml", init=False)
    report = import_weights(module, tv)
    assert report["mapping"]["layer2.0.shortcut.conv"] == "layer2.0.downsample.0"
    assert report["mapping"]["layer2.0.conv1"] == "layer2.0.conv1"
    assert_every_tensor_landed(module, tv, report)
    assert_same_outputs(module, tv, size=64)


def test_order_is_execution_order():
    tv = torchvision_model("resnet18", device="meta")
    register_first(tv, "fc")   # the head registered first still runs last
    order = execution_order(tv, (3, 64, 64))
    assert list(tv.state_dict())[0] == "fc.weight"
    assert order.keys[:2] == ("conv1.weight", "bn1.weight") and order.keys[-2:] == ("fc.weight", "fc.bias")
    assert order.unused == ()


def test_a_tensor_its_parent_reads_is_placed_where_it_is_used():
    # nn.MultiheadAttention reads out_proj.weight itself and never calls out_proj: stamped at its use
    vit = torchvision_model("vit_b_16", device="meta")
    keys = execution_order(vit, (3, 224, 224)).keys
    layer0 = [k.removeprefix("encoder.layers.encoder_layer_0.") for k in keys if "encoder_layer_0." in k]
    assert layer0[:6] == ["ln_1.weight", "ln_1.bias", "self_attention.in_proj_weight", "self_attention.in_proj_bias",
                          "self_attention.out_proj.weight", "self_attention.out_proj.bias"]
    assert keys[:3] == ("conv_proj.weight", "conv_proj.bias", "class_token")   # the token joins after the patches


class WithAuxHead(nn.Module):
    """A classifier with an auxiliary head that only runs in training (as GoogLeNet's and Inception's)."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(8, 10)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        return (self.fc(x), self.aux(x)) if self.training else self.fc(x)


def test_a_head_unused_in_eval_is_left_out():
    order = execution_order(WithAuxHead(), (3, 8, 8))
    assert order.keys == ("conv.weight", "conv.bias", "fc.weight", "fc.bias")
    assert order.unused == ("aux.weight", "aux.bias")


class DataDependent(nn.Module):
    """A forward that reads a value (.item()): it cannot run on the meta device, so it runs for real."""

    def __init__(self):
        super().__init__()
        self.b = nn.Conv2d(3, 4, 1)
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.a(x) if x.sum().item() >= 0 else self.b(x)


def test_a_model_that_cannot_run_on_meta_runs_for_real():
    m = DataDependent()
    assert execution_order(m, (3, 4, 4)).keys == ("a.weight", "a.bias")   # the zero input takes the `a` branch
    assert m.training   # its mode is restored
