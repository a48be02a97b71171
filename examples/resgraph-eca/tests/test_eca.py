"""The `eca` op against ECA-Net's reference layer, in PyTorch and in ONNX Runtime, through resgraph.

Install the plugin first: pip install -e examples/resgraph-eca[test]; then pytest examples/resgraph-eca/tests.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import resgraph
from resgraph_eca.op import kernel_for

SPEC = Path(__file__).parents[1] / "specs" / "eca_resnet20.yaml"


class ReferenceECA(nn.Module):
    """ECA-Net's eca_layer (github.com/BangguWu/ECANet, models/eca_module.py), as published."""

    def __init__(self, k_size=3):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return x * self.sigmoid(y).expand_as(x)


def test_adaptive_kernel_is_the_papers():
    """k = |log2(C) / 2 + 1 / 2|, odd: ECA-Net's table for ResNet's widths."""
    assert [kernel_for(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    for c in range(1, 5000):   # ECA-Net's code: t = int(abs((log(C, 2) + b) / gamma)); k = t if t % 2 else t + 1
        t = int(abs((math.log(c, 2) + 1) / 2))
        assert kernel_for(c) == (t if t % 2 else t + 1), c


def test_counts():
    """Each gate has k weights; 9 blocks of 16, 32 and 64 channels take k = 3: 27 more than ResNet-20's."""
    c = resgraph.check(str(SPEC))
    assert c.params == 272_474 + 9 * 3


def _spec(tmp_path, kernel):
    text = SPEC.read_text().replace("        - eca  ", f"        - eca: {{kernel: {kernel}}}  ")
    p = tmp_path / "eca.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("kernel", [0, 5])
def test_equals_reference_layer(tmp_path, kernel):
    """resgraph's module with the reference layer's weights gives the reference's output at every gate."""
    m = resgraph.to_torch(_spec(tmp_path, kernel), vars={"n": 1}, seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    for path in ("stage1.0.eca1", "stage3.0.eca1"):
        gate = m.get_submodule(path)
        ref = ReferenceECA(gate.conv.kernel_size[0])
        ref.conv.weight.data.copy_(gate.conv.weight)
        gate.register_forward_hook(lambda mod, i, o, ref=ref, path=path: seen.__setitem__(path, (ref(i[0]), o)))
    with torch.no_grad():
        m(x)
    for path, (want, got) in seen.items():
        assert torch.allclose(got, want, atol=1e-6), path
    assert seen["stage3.0.eca1"][1].shape == (2, 64, 8, 8)


def test_onnx_equals_torch(tmp_path):
    """The ONNX lowering (GlobalAveragePool, Conv 1-D, Sigmoid, Mul) gives PyTorch's outputs on ONNX Runtime."""
    import onnxruntime as ort
    out = tmp_path / "compiled"
    resgraph_cli(["compile", str(SPEC), "-o", str(out), "--no-fold"])
    m = resgraph.to_torch(str(SPEC), weights=str(out / "weights.safetensors")).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(None, {"image": x})[0]
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() <= 1e-4


def resgraph_cli(args):
    from click.testing import CliRunner

    from resgraph.cli import cli
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
