"""Parameter and MAC counts against independent counters, not against resgraph's own numbers.

MACs: PyTorch's `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-accumulate of
aten.convolution (2 * prod(weight shape) * prod(output H, W) * batch) and of aten.mm / addmm (2 * m * n * k);
it counts neither bias additions, nor pooling, bn, activations or adds. resgraph's MAC count
(ops/count.py) is exactly the conv, linear and inserted-projection (1x1 conv, or bias-free linear on
vectors) multiply-accumulates, also without biases, so FLOPs = 2 x MACs with nothing to subtract. It is
checked per node and in total, on the emitted module (batch 1) for every shipped spec and for the random
specs of test_differential, and on torchvision's and timm's own models where they exist.

Parameters: torchvision's and timm's models, `sum(p.numel() for p in model.parameters())`, built on the
meta device (no weights are downloaded or even allocated; RegNet's constructor computes its widths with
tensors, so it is built on the CPU and moved there).

Modules run on the meta device: the counter reads shapes only, and one CPU run shows it counts the same.
"""
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import resgraph  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.errors import SpecError  # noqa: E402
from resgraph.ops.count import node_macs, node_params  # noqa: E402
from conftest import ROOT, SPECS, check_small  # noqa: E402

TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2",
               "densenet121", "regnet_y_400mf", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny"]
TIMM = {"se_resnet50": "seresnet50"}   # shipped spec -> timm's model


def count_flops(module, shape, device="meta"):
    """(total FLOPs, FLOPs per module path) of one forward pass with a batch of 1."""
    counter = FlopCounterMode(display=False)
    with torch.device(device), torch.no_grad(), counter:
        module.eval()(torch.zeros(1, *shape))
    root = type(module).__name__
    per = {k.removeprefix(root + "."): sum(v.values()) for k, v in counter.get_flop_counts().items()
           if k.startswith(root + ".")}
    return counter.get_total_flops(), per


def under(per, path):
    """FLOPs charged to the module at `path` and its submodules (the counter lists the modules called)."""
    leaves = [p for p in per if not any(q.startswith(p + ".") for q in per)]
    return sum(per[p] for p in leaves if p == path or p.startswith(path + "."))


def emitted(checked, device="meta"):
    with torch.device(device):
        return resgraph.to_torch(checked, init=False)


def assert_params_match_the_module(checked, module):
    """Each node's parameter count is the numel of the module's parameters under its path."""
    g = checked.graph
    paths = sorted((n.path for n in g.nodes[1:]), key=len, reverse=True)
    got = {}
    for name, t in module.named_parameters():
        owner = next(p for p in paths if name.startswith(p + "."))   # the longest node path it lies under
        got[owner] = got.get(owner, 0) + t.numel()
    want = {n.path: node_params(n, g) for n in g.nodes[1:] if node_params(n, g)}
    assert got == want
    assert sum(t.numel() for t in module.parameters()) == checked.params


def assert_macs_match_the_counter(checked, device="meta"):
    g = checked.graph
    module = emitted(checked, device)
    assert_params_match_the_module(checked, module)
    total, per = count_flops(module, g.nodes[0].shape, device)
    # every node that does multiply-accumulates: its module's FLOPs (submodules included) are twice its MACs
    ours = {n.path: node_macs(n, g) for n in g.nodes[1:]}
    for path, macs in ours.items():
        if macs:
            assert under(per, path) == 2 * macs, f"{path} ({g[path].op}): counter {under(per, path)} FLOPs, resgraph {macs} MACs"
    # and no FLOPs anywhere else: no module the counter charges is missing from resgraph's count
    charged = {p for p, f in per.items() if f and not any(p == q or p.startswith(q + ".") for q, m in ours.items() if m)}
    assert not charged, f"FLOPs outside resgraph's MAC count: { {p: per[p] for p in charged} }"
    assert total == 2 * checked.macs, f"counter {total} FLOPs = {total / 2:.0f} MACs, resgraph {checked.macs}"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_macs_of_every_shipped_spec_match_pytorchs_flop_counter(path):
    assert_macs_match_the_counter(check_small(path))


def test_the_counter_counts_the_same_on_the_cpu():
    checked = resgraph.check(str(ROOT / "specs" / "cifar_resnet20_b.yaml"))
    assert count_flops(emitted(checked, "cpu"), (3, 32, 32), "cpu") == count_flops(emitted(checked), (3, 32, 32))
    assert_macs_match_the_counter(checked, "cpu")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.deferred(lambda: __import__("test_differential").specs()))
def test_macs_of_random_specs_match_pytorchs_flop_counter(text):
    """test_differential's random specs: groups, dilation, even kernels, strides, every shortcut policy,
    upsampling, vector tails with linear Ws."""
    try:
        checked = check_text(text, "fuzz.yaml")
    except SpecError:
        event("refused by check")
        return
    event("compared")
    note(text)
    assert_macs_match_the_counter(checked)


# corners the shipped and random specs leave out: an explicit `project` on a vector (a bias-free linear) and on
# a map with stride, bias-free layers, a depthwise conv with dilation, an even kernel with 'same' padding
CORNERS = ["""resgraph: 1
name: corners
input: {shape: [6, 9, 9]}
layers:
  - conv: {out: 12, kernel: 3, groups: 6, dilation: 2, bias: false}
  - conv: {out: 8, kernel: 2, stride: 2}
  - project: {out: 10, stride: 2}
  - avgpool: {kernel: 2, padding: same}
  - flatten
  - project: {out: 7}
  - linear: {out: 5, bias: false}
  - residual: {layers: [{linear: {out: 9, bias: false}}, bn], post: relu}
"""]


@pytest.mark.parametrize("text", CORNERS)
def test_counts_of_corner_cases_match_the_module_and_the_counter(text):
    assert_macs_match_the_counter(check_text(text))


def torchvision_model(name):
    pytest.importorskip("torchvision")
    from resgraph.backends.torch.torchvision import torchvision_model as build
    return build(name, device="meta")


def assert_params_and_macs_match(name, model):
    assert (ROOT / "specs" / f"{name}.yaml").exists()
    checked = resgraph.check(str(ROOT / "specs" / f"{name}.yaml"))
    assert checked.params == sum(p.numel() for p in model.parameters())
    assert checked.graph.nodes[0].shape == (3, 224, 224)
    total, _ = count_flops(model, (3, 224, 224))
    assert 2 * checked.macs == total, f"the reference {total / 2:.0f} MACs, resgraph {checked.macs}"


@pytest.mark.parametrize("name", TORCHVISION)
def test_params_and_macs_match_torchvisions_models(name):
    assert_params_and_macs_match(name, torchvision_model(name))


@pytest.mark.parametrize("name", TIMM)
def test_params_and_macs_match_timms_models(name):
    pytest.importorskip("timm")
    from resgraph.backends.torch.timm import timm_model
    assert_params_and_macs_match(name, timm_model(TIMM[name], device="meta"))


def test_every_torchvision_counterpart_is_compared():
    """A shipped spec named after a torchvision model is in TORCHVISION (so it cannot be skipped by omission)."""
    torchvision = pytest.importorskip("torchvision")
    shipped = {p.stem for p in SPECS}
    assert shipped & set(torchvision.models.list_models(torchvision.models)) == set(TORCHVISION)
