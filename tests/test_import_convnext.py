"""`resgraph import` of ConvNeXt (timm's and torchvision's) and of the single fx nodes that are one of
resgraph's ops as they are. ConvNeXt runs its layer norms and nn.Linear on channels-last maps between
two permutes, holds its layer scale as a bare parameter and (torchvision) calls stochastic_depth as a
function: the spec has layernorm, 1x1 convs, scale and drop_path on [C, H, W] instead. The proof is
the round trip, on real randomly initialised models (no download): the written spec checks to the
model's own parameter and MAC counts, and the spec's module with the written weights computes the
model's outputs. Imports run at 64 x 64 to stay quick (ConvNeXt-T is 4.5 GMACs at 224)."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import StochasticDepth

from resgraph.backends.importer import import_model, load_source, write
from resgraph.backends.torch import to_torch
from resgraph.errors import WeightsError
from resgraph.frontend import check_file

pytest.importorskip("timm")
SHAPE = (3, 64, 64)
SCALES = {"timm:convnext_tiny": "gamma", "torchvision:convnext_tiny": "layer_scale"}


def _macs(model: nn.Module, shape=SHAPE) -> int:
    """The model's MACs as torch counts them (FLOPs of convs and matmuls, halved)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def _assert_same_outputs(imported, tmp_path) -> None:
    """The written spec, compiled with the written weights, computes the model's outputs (1e-5 relative)."""
    spec, weights = tmp_path / "m.yaml", tmp_path / "m.safetensors"
    write(imported, str(spec), str(weights))
    ours = to_torch(check_file(str(spec)).graph, weights=str(weights)).eval()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), imported.model(x)
    a = a[0] if isinstance(a, (tuple, list)) else a
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()
    assert imported.report["max_abs_diff"] <= 1e-5 * b.abs().max().item()


@pytest.mark.parametrize("source", list(SCALES))
def test_convnext_imports_with_the_models_counts_and_outputs(source, tmp_path):
    start = time.perf_counter()
    imported = import_model(source, input_shape=SHAPE)
    took = time.perf_counter() - start
    model, text = imported.model, imported.text
    c = check_file(str(_written(imported, tmp_path)))
    assert c.params == sum(p.numel() for p in model.parameters()) == 28_589_128
    assert c.macs == _macs(model)
    ops = [n.op for n in c.graph.nodes]
    assert ops.count("layernorm") == 23 and ops.count("scale") == 18 and "linear" in ops   # the head stays linear
    assert "permute" not in text and len(text.splitlines()) <= 50, text
    assert took <= 30, took
    print(f"\n{source}: {len(text.splitlines())} lines, imported in {took:.1f} s\n{text}")


def _written(imported, tmp_path):
    spec = tmp_path / "spec.yaml"
    write(imported, str(spec))
    return spec


@pytest.mark.parametrize("source", list(SCALES))
def test_convnext_block_bodies_are_verified(source, tmp_path):
    """Random ConvNeXt layer scales start at 1e-6, which hides the blocks' bodies from any output
    comparison; with the scales drawn at random the outputs must still agree."""
    model = load_source(source)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(SCALES[source]):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    _assert_same_outputs(import_model(model, name="convnext", input_shape=SHAPE), tmp_path)


class _Functional(nn.Module):
    """Torch functions, methods and in-place operators that are resgraph ops as they are."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.sd = StochasticDepth(0.2, "row")        # calls torchvision.ops.stochastic_depth
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu6(self.conv1(x))
        y = self.sd(F.hardsigmoid(self.conv2(x)))
        y += x                                       # operator.iadd: the residual add
        x = F.leaky_relu(y.relu_(), 0.2)
        x = x.mean((2, 3), keepdim=True)             # timm's squeeze
        x = F.adaptive_avg_pool2d(x, (1, 1))         # densenet's pool
        x = F.dropout(torch.flatten(x, 1), p=0.3, training=self.training)
        return self.fc(x)


def test_functional_nodes_map_to_ops_and_round_trip(tmp_path):
    imported = import_model(_Functional().eval(), input_shape=SHAPE)
    ops = [n.op for n in imported.checked.graph.nodes[1:]]
    assert ops == ["conv", "relu6", "conv", "hardsigmoid", "drop_path", "add", "relu", "leaky_relu",
                   "global_avgpool", "global_avgpool", "flatten", "dropout", "linear"], ops
    assert [n.args["p"] for n in imported.checked.graph.nodes if n.op == "drop_path"] == [0.2]
    _assert_same_outputs(imported, tmp_path)


class _Inexact(nn.Module):
    """Nodes that look like resgraph ops but compute something else: each must be refused."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(64, 64)

    def forward(self, x):
        x = self.conv(x)
        x = F.gelu(x, approximate="tanh")            # resgraph's gelu is exact (erf)
        x = x * 0.5                                  # a constant, not a tensor
        x = torch.cat([x, x], dim=2)                 # along H, not the channels
        y = x.relu_()
        x = y + x                                    # reads x after relu_ changed it
        x = x.permute(0, 2, 1, 3)                    # neither to channels-last nor back
        x = self.fc(x.permute(0, 2, 1, 3))           # an nn.Linear over the width of a [N, C, H, W] map
        return x.mean((2, 3))                        # without keepdim: [N, C], not a pool


def test_inexact_look_alikes_are_all_refused():
    with pytest.raises(WeightsError) as e:
        import_model(_Inexact().eval(), input_shape=SHAPE)
    got = [d.message for d in e.value.diagnostics]
    assert got == ["unsupported node 'gelu': function gelu with the tanh approximation (resgraph's gelu is exact)",
                   "unsupported node 'mul': function mul that is not of two tensors",
                   "unsupported node 'cat': function cat along dim 2, not the channels",
                   "unsupported node 'relu_': in-place method .relu_() whose input is read again after it",
                   "unsupported node 'permute': method .permute() to dims (0, 2, 1, 3) of an [N, C, H, W] map "
                   "(only to channels-last and back)",
                   "unsupported node 'permute_1': method .permute() to dims (0, 2, 1, 3) of an [N, C, H, W] map "
                   "(only to channels-last and back)",
                   "unsupported node 'fc': module Linear on a [N, C, H, W] map (over its width)",
                   "unsupported node 'mean': method .mean() (not over H and W, kept)"], got
