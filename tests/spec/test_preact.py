"""Pre-activation residual blocks (He et al. 2016, "Identity Mappings"): `project_from:` makes a Ws read
the bn-relu'd input while an identity shortcut keeps the input itself, and the `conv` policy is the
bn-free 1x1 conv of the common PreAct code. PreAct-ResNet-18 for CIFAR has that code's 11,172,170
parameters, its state-dict paths, and its outputs once its weights are imported by structure."""
import pytest

from conftest import run_cli
from resgraph.errors import SpecError
from resgraph.frontend import check_text

PREACT18 = """resgraph: 1
name: preact_resnet18
input: {shape: [3, 32, 32]}
shortcut: conv
defaults:
  conv: {bias: false}
blocks:
  preact:
    args: {out: null, stride: 1}
    residual:
      project_from: pre
      layers:
        - bn: {id: bn1}
        - relu: {id: pre}
        - conv: {out: $out, kernel: 3, stride: $stride, id: conv1}
        - bn: {id: bn2}
        - relu
        - conv: {out: $out, kernel: 3, id: conv2}
layers:
  - conv: {id: conv1, out: 64, kernel: 3}
  - preact: {id: layer1, out: 64, repeat: 2}
  - preact: {id: layer2, out: 128, repeat: 2, first: {stride: 2}}
  - preact: {id: layer3, out: 256, repeat: 2, first: {stride: 2}}
  - preact: {id: layer4, out: 512, repeat: 2, first: {stride: 2}}
  - bn
  - relu
  - global_avgpool
  - flatten
  - linear: {id: linear, out: 10}
"""


def test_project_from_feeds_the_ws_and_the_identity_keeps_the_input():
    c = check_text(PREACT18)
    g = c.graph
    assert c.params == 11_172_170 and c.warnings == ()
    # a projected block: the Ws (a bn-free 1x1 conv) reads the pre-activation
    ws = g["layer2.0.shortcut"]
    assert ws.op == "conv" and ws.inputs == ("layer2.0.pre",) and ws.args["bias"] is False and ws.args["stride"] == 2
    assert g["layer2.0"].inputs == ("layer2.0.conv2", "layer2.0.shortcut")
    (p,) = [p for p in g.projections if p.at == "layer2.0"]
    assert (p.kind, p.bn, p.edge, p.stride) == ("conv1x1", False, "layer2.0.pre", 2)
    # an identity block: the add reads the block's input, not the pre-activation
    assert g["layer1.1"].inputs == ("layer1.1.conv2", "layer1.0")
    assert [q.to_json()["kind"] for q in g.projections] == ["conv1x1"] * 3   # the contract's kinds


def test_the_conv_policy_follows_the_conv_defaults_bias():
    c = check_text(PREACT18.replace("defaults:\n  conv: {bias: false}\n", ""))
    assert c.graph["layer2.0.shortcut"].args["bias"] is True
    assert c.params - 11_172_170 == sum(n.args["out"] for n in c.graph.nodes if n.op == "conv")


@pytest.mark.parametrize("value,words", [("nope", "unknown id 'nope'"), ("input", "project_from names an entry"),
                                         ("conv2x", "unknown id")])
def test_project_from_errors_are_located(value, words):
    with pytest.raises(SpecError) as e:
        check_text(PREACT18.replace("project_from: pre", f"project_from: {value}"), "p.yaml")
    assert e.value.line == 11 and words in e.value.message


def test_an_explicit_add_takes_project_from_too():
    c = check_text("resgraph: 1\nname: t\ninput: {shape: [4, 8, 8]}\nlayers:\n  - bn\n  - relu: {id: pre}\n"
                   "  - conv: {out: 8, kernel: 3, stride: 2}\n  - add: {from: [input], project_from: pre, shortcut: conv}\n")
    assert c.graph["add1.shortcut"].inputs == ("pre",)
    assert c.warnings == ()


def test_project_from_naming_the_bodys_last_entry_is_a_located_error_that_lists_the_valid_ids():
    """The Ws would read the body's output: the add would be body + Ws(body), and the block's input
    would reach it by no path. Reported once for the block (at its first call), not per copy."""
    with pytest.raises(SpecError) as e:
        check_text(PREACT18.replace("project_from: pre", "project_from: conv2"), "p.yaml")
    (d,) = e.value.diagnostics
    assert (d.loc.line, d.loc.col, d.span) == (11, 21, 5)
    assert d.message.startswith("project_from 'conv2' is the body's last entry") and "(in layer1.0 from line 21)" in d.message
    assert "the block's input would not reach the add" in d.message
    assert "name an earlier entry of the body" in d.hint and "bn1, pre, conv1, bn2" in d.hint


def test_project_from_an_inline_residuals_only_entry_is_an_error_through_the_cli(write_spec):
    spec = write_spec("resgraph: 1\nname: t\ninput: {shape: [4, 8, 8]}\nlayers:\n  - residual:\n"
                      "      project_from: c\n      layers:\n        - conv: {out: 8, kernel: 3, stride: 2, id: c}\n")
    r = run_cli("check", spec)
    assert r.returncode == 1 and r.stdout == ""
    assert f"{spec}:6:21: error: project_from 'c' is the body's last entry" in r.stderr
    assert "give an earlier entry of the body an id" in r.stderr and "1 error" in r.stderr


def test_project_from_a_tensor_argument_does_not_read_the_blocks_input():
    text = ("resgraph: 1\nname: t\ninput: {shape: [4, 8, 8]}\nblocks:\n  up:\n    args: {out: null, skip: tensor}\n"
            "    residual:\n      project_from: skip\n      layers:\n        - bn: {id: pre}\n"
            "        - conv: {out: $out, kernel: 3, stride: 2}\n"
            "layers:\n  - conv: {out: 4, kernel: 3, id: a}\n  - relu\n  - up: {out: 8, skip: a}\n")
    with pytest.raises(SpecError) as e:
        check_text(text, "t.yaml")
    assert (e.value.line, e.value.column) == (8, 21)
    assert "project_from 'skip' is not computed from the block's input" in e.value.message and "pre" in e.value.hint
    assert check_text(text.replace("project_from: skip", "project_from: pre")).graph["up1.shortcut.conv"].inputs == ("up1.pre",)


def test_an_explicit_add_may_not_project_from_its_own_main_input():
    text = ("resgraph: 1\nname: t\ninput: {shape: [4, 8, 8]}\nlayers:\n  - bn\n  - relu: {id: pre}\n"
            "  - conv: {out: 8, kernel: 3, stride: 2, id: c}\n  - add: {from: [input], project_from: c, shortcut: conv}\n")
    with pytest.raises(SpecError) as e:
        check_text(text, "t.yaml")
    assert (e.value.line, e.value.column) == (8, 40)
    assert "project_from 'c' is the add's main input" in e.value.message and "leave project_from out" in e.value.hint


torch = pytest.importorskip("torch")


class PreActBlock(torch.nn.Module):
    """The common PyTorch PreAct block (as in the widely used CIFAR code), written by hand."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin, stages = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn, self.linear = nn.BatchNorm2d(512), nn.Linear(512, 10)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = torch.relu(self.bn(out)).mean((2, 3))
        return self.linear(out)


def test_preact_resnet18_equals_the_hand_written_pytorch_model():
    import resgraph
    from resgraph.backends.torch.importer import import_weights
    ref = PreActResNet18().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # non-trivial statistics: a misplaced bn or shortcut would show
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    assert sum(p.numel() for p in ref.parameters()) == 11_172_170
    c = check_text(PREACT18)
    module = resgraph.to_torch(c, init=False).eval()
    keys = set(module.state_dict())
    assert {"layer2.0.conv1.weight", "layer2.0.bn2.running_var", "layer2.0.shortcut.weight", "linear.bias"} <= keys
    import_weights(module, ref)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        a, b = module(x), ref(x)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_preact_parity_with_onnx_runtime_folded_and_unfolded():
    pytest.importorskip("onnxruntime")
    from conftest import assert_onnx_parity
    assert_onnx_parity(check_text(PREACT18.replace("[3, 32, 32]", "[3, 16, 16]")))
