"""The ops of the modern residual families: mul (channel gates), layernorm, groupnorm, scale (layer
scale), drop_path (stochastic depth), hardswish, hardsigmoid — against PyTorch's and torchvision's own
layers, with located shape errors. Parity with ONNX Runtime at every opset is ALL_OPS's
(tests/backends/onnx/test_onnx_backend.py)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import resgraph  # noqa: E402
from resgraph.errors import SpecError  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402

HEAD = "resgraph: 1\nname: t\ninput: {shape: [8, 6, 5]}\nlayers:\n"


def module(layers: str):
    c = check_text(HEAD + layers)
    return c, resgraph.to_torch(c, seed=0).eval()


def test_mul_broadcasts_a_channel_gate_and_refuses_what_does_not_broadcast():
    c, m = module("  - global_avgpool: {id: g}\n  - sigmoid\n  - mul: {from: [input]}\n")
    assert c.graph[c.graph.output].shape == (8, 6, 5)
    x = torch.randn(2, 8, 6, 5)
    assert torch.equal(m(x), torch.sigmoid(x.mean((2, 3), keepdim=True)) * x)
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "  - conv: {out: 4, kernel: 1}\n  - global_avgpool\n  - mul: {from: [input]}\n")
    assert e.value.line == 7 and "global_avgpool1 [4, 1, 1] with input [8, 6, 5]: dimension 0 is 4 against 8" in e.value.message
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "  - global_avgpool\n  - flatten\n  - mul: {from: [input]}\n")
    assert "one rank" in e.value.message and "[C, 1, 1]" in e.value.hint


def test_layernorm_over_channels_is_torchvisions_layernorm2d():
    tv = pytest.importorskip("torchvision.models.convnext")
    c, m = module("  - layernorm: {eps: 1.0e-6}\n")
    ref = tv.LayerNorm2d(8, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_()
    m.load_state_dict({f"layernorm1.{k}": v for k, v in ref.state_dict().items()})
    x = torch.randn(3, 8, 6, 5)
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    v, mv = module("  - flatten\n  - layernorm\n")
    assert isinstance(mv.get_submodule("layernorm1"), torch.nn.LayerNorm) and v.params == 2 * 240


def test_groupnorm_needs_groups_that_divide_the_channels():
    c, m = module("  - groupnorm: {groups: 4}\n")
    assert isinstance(m.get_submodule("groupnorm1"), torch.nn.GroupNorm) and c.params == 16
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "  - groupnorm: {groups: 3}\n")
    assert e.value.line == 5 and "groups=3 must divide the 8 channels" in e.value.message
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "  - groupnorm\n")
    assert "needs 'groups'" in e.value.message


def test_scale_starts_at_its_init_value_per_channel():
    c, m = module("  - scale: {init: 1.0e-6}\n")
    assert c.params == 8 and torch.equal(m.state_dict()["scale1.weight"], torch.full((8,), 1e-6))
    x = torch.randn(2, 8, 6, 5)
    assert torch.equal(m(x), x * 1e-6)


def test_drop_path_drops_whole_samples_in_training_and_is_gone_when_compiled():
    c, m = module("  - drop_path: {p: 0.25}\n")
    x = torch.ones(4000, 8, 6, 5)
    assert torch.equal(m.eval()(x), x)
    torch.manual_seed(0)
    y = m.train()(x)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    # a sample is kept or dropped whole; kept ones are scaled by 1 / (1 - p), so the mean stays 1
    assert torch.all(per_sample[kept] == 1 / 0.75) and torch.all(per_sample[~kept] == 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.03 and abs(y.mean().item() - 1) < 0.05
    g, _ = for_inference(c.graph, {})
    assert [n.op for n in g.nodes] == ["input"]
    with pytest.raises(SpecError) as e:
        check_text(HEAD + "  - drop_path\n")
    assert "needs 'p'" in e.value.message


@pytest.mark.parametrize("op,fn", [("hardswish", torch.nn.functional.hardswish),
                                   ("hardsigmoid", lambda x: torch.nn.functional.relu6(x + 3) / 6)])
def test_hard_activations_are_pytorchs(op, fn):
    _, m = module(f"  - {op}\n")
    x = torch.linspace(-5, 5, 8 * 6 * 5).reshape(1, 8, 6, 5)
    assert torch.allclose(m(x), fn(x), atol=1e-7)


def test_se_block_counts_match_torchvisions_squeeze_excitation():
    """A squeeze-and-excitation gate written as a residual-free block equals torchvision's module."""
    ops = pytest.importorskip("torchvision.ops")
    text = ("  - global_avgpool\n  - conv: {out: 2, kernel: 1}\n  - relu\n  - conv: {out: 8, kernel: 1}\n"
            "  - sigmoid\n  - mul: {from: [input]}\n")
    c, m = module(text)
    ref = ops.SqueezeExcitation(8, 2)
    assert c.params == sum(p.numel() for p in ref.parameters())
    m.load_state_dict(dict(zip(m.state_dict(), ref.state_dict().values())))
    x = torch.randn(2, 8, 6, 5)
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    assert np.isclose(c.macs, 8 * 2 + 2 * 8)
