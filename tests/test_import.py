"""`resgraph import`: real torchvision/timm models traced back to specs. The proof is the round trip:
the written spec checks to the model's own parameter and MAC counts, and the spec's module with the
written weights computes the model's outputs."""
from __future__ import annotations

import os
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resgraph.backends.importer import import_model, write
from resgraph.backends.torch import to_torch
from resgraph.cli import cli
from resgraph.errors import OptionError, WeightsError
from resgraph.frontend import check_file

FAMILIES = ["torchvision:resnet18", "torchvision:resnet34", "torchvision:resnet50",
            "torchvision:resnext50_32x4d", "torchvision:wide_resnet50_2", "timm:resnet50d",
            "torchvision:mobilenet_v3_small", "torchvision:regnet_y_400mf", "timm:seresnet50",
            "torchvision:efficientnet_b0"]


def _macs(model: nn.Module, shape=(3, 224, 224)) -> int:
    """The model's MACs as torch counts them (FLOPs of convs and matmuls, halved)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


SHAPE = (3, 96, 96)   # the round trips' input: every family takes it, and it is a fifth of 224's work


@pytest.mark.parametrize("source", FAMILIES)
def test_round_trip_gives_the_models_counts_and_outputs(source, tmp_path):
    spec, weights = tmp_path / "m.yaml", tmp_path / "m.safetensors"
    imported = import_model(source, input_shape=SHAPE)
    write(imported, str(spec), str(weights))
    model = imported.model
    c = check_file(str(spec))
    assert c.params == sum(p.numel() for p in model.parameters())
    assert c.macs == _macs(model, SHAPE)
    ours = to_torch(c.graph, weights=str(weights)).eval()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x), model(x)
    a = a[0] if isinstance(a, (tuple, list)) else a
    assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item()


def test_resnet50_reads_as_written_by_hand_and_imports_in_time(tmp_path):
    start = time.perf_counter()
    imported = import_model("torchvision:resnet50")
    took = time.perf_counter() - start
    lines = imported.text.splitlines()
    assert len(lines) <= 45, imported.text
    assert took <= 10, took
    assert sum(1 for line in lines if line.startswith("  ") and not line.startswith("   ")
               and line.endswith(":")) == 1   # one block under blocks:
    assert "  - bottleneck: {id: layer2, width: 128, repeat: 4, first: {stride: 2}}" in lines
    assert sum("repeat:" in line for line in lines) == 4
    assert '        - conv: {out: "$width * 4", kernel: 1}' in lines
    paths = {n.path for n in imported.checked.graph.nodes}
    assert {"layer3.4.conv2", "layer1.0.shortcut.conv", "fc"} <= paths


def test_a_gate_inside_a_body_and_between_blocks_is_wired_with_in_and_from():
    """MobileNetV3's squeeze-and-excitation: the mul reads the map the gate was computed from, inside a
    residual body and in the blocks without one; the bn settings every layer shares become `defaults:`;
    a module between the residual ones that reads only the value before it is a block too."""
    text = import_model("torchvision:mobilenet_v3_small").text
    lines = text.splitlines()
    assert "        - mul: {in: block_1_2, from: [block_2_scale_activation]}" in lines, text
    assert "        - hardswish: {id: block_1_2}" in lines
    assert "      - mul: {in: block_0_2, from: [block_1_scale_activation]}" in lines   # a block without a shortcut
    assert "  bn: {eps: 0.001, momentum: 0.01}" in lines and "        - bn" in lines
    assert "  inverted_residual2:" in lines   # named after torchvision's class, not its inner Sequential
    # the modules between the residual ones are blocks too, and the same one is called twice
    assert "  - conv2d_norm_activation: {id: features_0, out: 16, kernel: 3}" in lines
    assert "  - conv2d_norm_activation: {id: features_12, out: 576, kernel: 1, stride: 1}" in lines
    assert len(lines) <= 105, len(lines)


def test_a_shortcut_that_runs_first_is_written_out_and_a_stage_opens_with_another_block():
    """torchvision's RegNet computes proj(x) + f(x): weights pair in execution order, so the stage's first
    block is plain layers with the projection first, and `first: {block: ...}` opens each stage with it."""
    text = import_model("torchvision:regnet_y_400mf").text
    lines = text.splitlines()
    assert len(lines) <= 65, text
    assert "  - res_bottleneck_block2: {id: trunk_output_block3, out: 208, repeat: 6, first: {block: " \
           "res_bottleneck_block, width: 26}}" in lines, text
    assert "      - add: {from: [proj_1]}" in lines and "      - conv: {in: input, out: $out, kernel: 1}" in lines


def test_a_rate_that_grows_block_by_block_is_one_variable():
    """torchvision's stochastic depth p = 0.2 * k / 16 in the k-th of EfficientNet-B0's 16 blocks: one
    `vars:` step and `"$p_step * (k0 + $copy)"` per stage, so each stage is still one repeat."""
    text = import_model("torchvision:efficientnet_b0").text
    lines = text.splitlines()
    assert "vars: {p_step: 0.0125}" in lines, text
    assert '  - mbconv3: {id: features_4, width: 480, kernel: 3, p: "$p_step * (5 + $copy)", repeat: 3, first: ' \
           '{block: mbconv2, width: 240, stride: 2, out: 80}}' in lines, text
    assert len(lines) <= 80


class _Unit(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class _Dense(nn.Module):
    """A stage of two residual units, then a concat of the stage's input and one unit's output."""

    def __init__(self, tap: int):
        super().__init__()
        self.stem, self.layer, self.tap = nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(_Unit(), _Unit()), tap

    def forward(self, x):
        x = self.stem(x)
        a = self.layer[0](x)
        b = self.layer[1](a)
        return torch.cat([x, (a, b)[self.tap]], 1)


def test_a_skip_to_a_stages_output_is_written_and_one_from_inside_a_repeat_is_refused():
    imported = import_model(_Dense(tap=1), input_shape=(3, 16, 16))
    assert "  - concat: {in: stem, from: [layer]}" in imported.text.splitlines(), imported.text
    assert imported.report["max_abs_diff"] == 0
    with pytest.raises(WeightsError, match="reads a copy inside a repeat other than its last"):
        import_model(_Dense(tap=0), input_shape=(3, 16, 16))


class _CatOfOne(nn.Module):
    """torchvision's DenseNet concatenates a list that holds one map in its first layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.conv(torch.cat([x], 1)), x], 1)


def test_a_concat_of_one_map_is_that_map():
    imported = import_model(_CatOfOne(), input_shape=(3, 8, 8))
    assert [n.op for n in imported.checked.graph.nodes][1:] == ["conv", "concat"], imported.text
    assert "  - concat: {from: [input]}" in imported.text.splitlines() and imported.report["max_abs_diff"] == 0


class _Odd(nn.Module):
    """Two ops resgraph lacks (a pixel shuffle and a cumulative sum) around a supported conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        y = self.shuffle(self.conv(x))
        return torch.cumsum(y, dim=1)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 0:   # data-dependent control flow: fx cannot trace it
            return self.conv(x)
        return x


def test_every_unsupported_node_is_listed_and_nothing_is_written(tmp_path):
    with pytest.raises(WeightsError) as e:
        import_model(_Odd())
    found = e.value.diagnostics
    assert [d.message for d in found] == ["unsupported node 'shuffle': module PixelShuffle",
                                          "unsupported node 'cumsum': function cumsum"]
    assert found[1].loc.file == __file__ and found[1].loc.line > 0   # the forward's line
    assert not os.listdir(tmp_path)


def test_an_untraceable_model_says_why():
    with pytest.raises(WeightsError, match="cannot be traced with torch.fx: TraceError"):
        import_model(_Branchy())


def test_cli_writes_the_spec_and_weights_and_refuses_a_bad_source(tmp_path):
    spec, weights = tmp_path / "r18.yaml", tmp_path / "r18.safetensors"
    r = CliRunner().invoke(cli, ["import", "torchvision:resnet18", "-o", str(spec), "--weights-out", str(weights),
                                 "--name", "my18"])
    assert r.exit_code == 0, r.output
    assert "params 11,689,512" in r.output and spec.exists() and weights.exists()
    assert "name: my18" in spec.read_text()
    r = CliRunner().invoke(cli, ["import", "model.onnx", "-o", str(tmp_path / "x.yaml")])
    assert r.exit_code == 1 and "no such ONNX file" in r.output and not (tmp_path / "x.yaml").exists()
    with pytest.raises(OptionError, match="unknown model source"):
        import_model("model.pt")


class _Activations(nn.Module):
    """PReLU (a slope per channel) and Mish, which the spec language has as prelu and mish."""

    def __init__(self):
        super().__init__()
        self.conv, self.act, self.mish = nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8, init=0.1), nn.Mish()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.mish(self.act(self.conv(x)))), 1))


def test_prelu_and_mish_import_from_torch_and_from_onnx(tmp_path):
    model = _Activations().eval()
    with torch.no_grad():
        model.act.weight.uniform_(-0.5, 0.5)   # slopes that differ per channel
    imported = import_model(model, input_shape=(3, 8, 8))
    assert [n.op for n in imported.checked.graph.nodes][1:4] == ["conv", "prelu", "mish"]
    assert imported.report["max_abs_diff"] <= 1e-6
    path = str(tmp_path / "act.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), path, dynamo=False, opset_version=18)
    back = import_model(path)
    assert [n.op for n in back.checked.graph.nodes][1:4] == ["conv", "prelu", "mish"], back.text


class _ConvBnRelu(nn.Module):
    """torchvision's BasicConv2d (Inception, GoogLeNet): its relu is F.relu in its own forward."""

    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, bias=False, **kw), nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class _Factorised(nn.Module):
    """Inception's 1x7 / 7x1 factorisation in a residual, between stems of _ConvBnRelu."""

    def __init__(self):
        super().__init__()
        self.first = _ConvBnRelu(3, 16, kernel_size=3, padding=1)
        self.a = _ConvBnRelu(16, 8, kernel_size=(1, 7), padding=(0, 3))
        self.b = _ConvBnRelu(8, 16, kernel_size=(7, 1), padding=(3, 0))
        self.down = nn.Conv2d(16, 8, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.first(x)
        x = self.b(self.a(x)) + x
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(x), 1), 1))


def test_non_square_convs_and_a_module_with_a_functional_relu_import():
    """Per-axis kernels, strides, dilations and paddings come back as [height, width]; a module that
    applies F.relu itself is one block with its relu (not an id given twice)."""
    imported = import_model(_Factorised().eval(), input_shape=(3, 17, 15))
    text = imported.text
    assert "- basic: {id: first}" not in text and text.count("{id: first}") == 1, text
    assert "kernel: [1, 7]" in text and "kernel: [7, 1]" in text and "stride: [2, 1]" in text, text
    assert "padding: [1, 0], dilation: [1, 2]" in text, text
    assert imported.report["max_abs_diff"] <= 1e-5
