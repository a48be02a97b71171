"""The PyTorch back end agrees with the compiler, initialises as documented, and is a good nn.Module."""
import copy

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch import fx  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch import LOWER, last_bn_of_each_residual_body  # noqa: E402
from resgraph.compiler import check_text  # noqa: E402
from resgraph.ops import OPS  # noqa: E402
from conftest import ROOT, SPECS  # noqa: E402


def test_every_op_has_a_torch_lowering():
    assert set(LOWER) == set(OPS)


class Capture(fx.Interpreter):
    """Runs the module node by node and records every value by its IR path."""
    def __init__(self, gm):
        super().__init__(gm)
        self.paths = gm.meta["resgraph"]["paths"]
        self.values = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.paths:   # a copy: a later in-place relu or add may overwrite the tensor
            self.values[self.paths[n.name]] = out.clone()
        return out


def capture(module, x):
    c = Capture(module)
    with torch.no_grad():
        out = c.run(x)
    return out, c.values


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_params_and_runtime_shapes_agree_with_the_compiler(path):
    checked = resgraph.check(str(path))
    m = resgraph.to_torch(checked, seed=0).eval()
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == checked.params
    x = torch.randn(2, *checked.graph.nodes[0].shape)
    out, values = capture(m, x)
    for n in checked.graph.nodes:
        assert tuple(values[n.path].shape) == (2, *n.shape), n.path
    assert torch.equal(out, m(x))


def test_parameter_names_are_the_spec_paths():
    keys = set(resgraph.to_torch(ROOT / "specs" / "resnet50.yaml", seed=0).state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer2.0.conv1.weight", "layer3.5.bn3.bias", "fc.weight",
              "layer2.0.shortcut.conv.weight", "layer2.0.shortcut.bn.weight", "layer1.0.shortcut.conv.weight"):
        assert k in keys, k
    mlp = resgraph.to_torch(ROOT / "specs" / "residual_mlp.yaml", seed=0)
    assert tuple(mlp.state_dict()["block.shortcut.weight"].shape) == (256, 128)


def test_forward_is_readable_python():
    code = resgraph.to_torch(ROOT / "specs" / "cifar_resnet20_b.yaml", seed=0).code
    assert "layer2_0_shortcut_conv = getattr(self.layer2, \"0\").shortcut.conv(layer1_2_post)" in code
    assert "layer2_0 = layer2_0_bn2.add_(layer2_0_shortcut_bn)" in code                  # in place, as torchvision
    assert "layer2_0_post = torch.nn.functional.relu(layer2_0, inplace = True)" in code


NET = """resgraph: 1
name: tiny
input: {shape: [3, 7, 7]}
shortcut: %s
layers:
  - conv: {out: 4, kernel: 3, bias: false}
  - bn
  - relu: {id: a}
  - residual:
      id: r
      layers:
        - conv: {out: 8, kernel: 3, stride: 2, bias: false}
        - bn
      post: relu
  - global_avgpool
  - flatten
  - linear: {out: 5}
"""


def tiny(policy="projection", **kw):
    return resgraph.to_torch(check_text(NET % policy), seed=0, **kw)


def test_zeropad_shortcut_is_option_a():
    m = tiny("zeropad").eval()
    x = torch.randn(3, 3, 7, 7)
    _, v = capture(m, x)
    a = v["a"]
    want = torch.zeros(3, 8, 4, 4)
    want[:, :4] = a[:, :, ::2, ::2]
    assert torch.equal(v["r.shortcut"], want)


def test_avgpool_shortcut_pools_ceil_mode_without_counting_padding():
    m = tiny("avgpool_projection").eval()
    x = torch.randn(3, 3, 7, 7)
    _, v = capture(m, x)
    a, pooled = v["a"], v["r.shortcut.pool"]
    assert pooled.shape == (3, 4, 4, 4)
    assert torch.allclose(pooled[:, :, 0, 0], a[:, :, 0:2, 0:2].mean((2, 3)))
    assert torch.allclose(pooled[:, :, 3, 3], a[:, :, 6, 6])            # a 1x1 window at the edge
    assert torch.allclose(pooled[:, :, 3, 1], a[:, :, 6, 2:4].mean(2))   # a 1x2 window at the edge


def test_asymmetric_same_padding_for_even_kernels():
    c = check_text("resgraph: 1\nname: e\ninput: {shape: [2, 5, 5]}\nlayers:\n  - conv: {out: 3, kernel: 2}\n"
                   "  - maxpool: {kernel: 2, stride: 1, padding: same}\n  - avgpool: {kernel: 4, stride: 2, padding: same}\n")
    m = resgraph.to_torch(c, seed=0).eval()
    x = torch.randn(1, 2, 5, 5)
    _, v = capture(m, x)
    conv = m.get_submodule("conv1")
    # 'same' for k=2: begin 0, end 1 -> the last row/column sees zero padding
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias)
    assert torch.allclose(v["conv1"], ref, atol=1e-6)
    y = v["maxpool1"]
    assert y.shape == (1, 3, 5, 5) and torch.equal(y[..., -1, -1], v["conv1"][..., -1, -1])
    z = v["avgpool1"]   # k=4: pad 1 before, 2 after; only real pixels are averaged
    assert z.shape == (1, 3, 3, 3) and torch.allclose(z[..., 0, 0], y[..., 0:3, 0:3].mean((-1, -2)))


def test_init_is_torchvision_style_and_seeded():
    a, b = (resgraph.to_torch(ROOT / "specs" / "resnet18.yaml", seed=7) for _ in range(2))
    c = resgraph.to_torch(ROOT / "specs" / "resnet18.yaml", seed=8)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.state_dict()["conv1.weight"], c.state_dict()["conv1.weight"])
    w = a.get_submodule("layer4.1.conv2").weight   # kaiming normal, fan_out: std = sqrt(2 / (512 * 9))
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 0.002
    bn = a.get_submodule("layer1.0.bn2")
    assert torch.equal(bn.weight, torch.ones(64)) and torch.equal(bn.bias, torch.zeros(64))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_residual_makes_identity_blocks_exact_identities(mode):
    text = (ROOT / "specs" / "cifar_resnet20_b.yaml").read_text().replace("vars: {n: 3}", "init: {zero_residual: true}\nvars: {n: 3}")
    checked = check_text(text)
    m = resgraph.to_torch(checked, seed=0)
    m.train(mode == "train")
    g = checked.graph
    assert last_bn_of_each_residual_body(g) == [f"layer{s}.{i}.bn2" for s in (1, 2, 3) for i in range(3)]
    _, v = capture(m, torch.randn(8, 3, 32, 32))
    identity_blocks = [n for n in g.nodes if n.op == "add" and not any(p.at == n.path for p in g.projections)]
    assert len(identity_blocks) == 7
    for add in identity_blocks:
        x = v[add.inputs[1]]
        assert (x >= 0).all()
        assert torch.equal(v[add.path + ".post"], x), add.path
    # a block with Ws is not the identity (the shortcut projects), but its body still starts at zero
    assert torch.equal(v["layer2.0.bn2"], torch.zeros_like(v["layer2.0.bn2"]))


def test_channels_last_and_autocast():
    m = resgraph.to_torch(ROOT / "specs" / "cifar_resnet20_b.yaml", seed=0).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = m(x)
    cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    assert torch.allclose(cl(x.to(memory_format=torch.channels_last)), ref, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), ref, atol=0.25, rtol=0.1)


def test_torch_export_with_dynamic_batch():
    m = tiny("zeropad").eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (torch.randn(2, 3, 7, 7),), dynamic_shapes=({0: batch},))
    for n in (1, 5):
        x = torch.randn(n, 3, 7, 7)
        assert torch.allclose(ep.module()(x), m(x), atol=1e-6)


def test_torch_compile():
    m = tiny("avgpool_projection").eval()
    compiled = torch.compile(m)
    x = torch.randn(4, 3, 7, 7)
    assert torch.allclose(compiled(x), m(x), atol=1e-5)


def test_backward_reaches_every_parameter():
    m = resgraph.to_torch(ROOT / "specs" / "cifar_resnet20_b.yaml", seed=0).train()
    m(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_state_dict_matches_the_op_tables_tensor_list(path):
    """One list of tensors (ops/table.py `tensors`) that every back end and checkpoint check use."""
    from resgraph.ops.count import state_dict_shapes
    checked = resgraph.check(str(path))
    m = resgraph.to_torch(checked, init=False)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == state_dict_shapes(checked.graph)
    assert list(m.state_dict()) == list(state_dict_shapes(checked.graph))
