"""The PyTorch back end agrees with the compiler, initialises as documented, and is a good nn.Module."""
import copy

import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
from torch import fx  # noqa: E402

import resgraph  # noqa: E402
from resgraph.backends.torch import LOWER, last_bn_of_each_residual_body  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.ops import OPS  # noqa: E402
from conftest import ROOT, SPECS, check_small  # noqa: E402


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
    checked = check_small(path)
    m = resgraph.to_torch(checked, seed=0).eval()
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == checked.params
    x = torch.randn(2, *checked.graph.nodes[0].shape)
    out, values = capture(m, x)
    for n in checked.graph.nodes:
        assert tuple(values[n.path].shape) == (2, *n.shape), n.path
    got = m(x)
    outs, gots = ((out,), (got,)) if len(checked.graph.outputs) == 1 else (out, got)   # several: a tuple, spec order
    assert all(torch.equal(a, b) for a, b in zip(outs, gots, strict=True))
    assert [tuple(t.shape[1:]) for t in gots] == [checked.graph[p].shape for _, p in checked.graph.outputs]


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


# --- init policies against their formulas -------------------------------------------------------
# Every layer here has fan_in != fan_out, so a policy that used the wrong fan would be off by 2x or more.
# conv1: weight [16, 64, 3, 3]: fan_in 576, fan_out 144 (9,216 draws); linear1: [64, 1152] (73,728 draws).
FANS = """resgraph: 1
name: fans
input: {shape: [64, 6, 6]}
%s
blocks:
  basic:
    args: {out: null}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, bias: false}
        - bn
        - relu
        - conv: {out: $out, kernel: 3, bias: false}
        - bn
      post: relu
layers:
  - conv: {out: 16, kernel: 3, bias: true}
  - bn
  - relu
  - residual:
      id: r
      layers:
        - conv: {out: 32, kernel: 3, bias: false}
        - bn
        - relu
        - conv: {out: 32, kernel: 3, bias: false}
        - bn
      post: relu
  - basic: {id: stage, out: 32, repeat: 2}
  - residual:
      id: nobn
      layers:
        - conv: {out: 32, kernel: 1}
      post: relu
  - bn: {id: after}
  - flatten
  - linear: {out: 64}
  - residual:
      id: v
      layers:
        - linear: {out: 128}
        - bn
      post: relu
  - linear: {out: 10}
"""
# (module path, fan_in, fan_out) of the layers with enough draws for their statistics to be sharp
BIG_CONVS = [("conv1", 64 * 9, 16 * 9), ("r.conv1", 16 * 9, 32 * 9)]
BIG_LINEARS = [("linear1", 1152, 64), ("v.linear1", 64, 128), ("v.shortcut", 64, 128)]   # v.shortcut: the inserted Ws


def fans(init: str = "", seed: int = 0):
    return resgraph.to_torch(check_text(FANS % init), seed=seed)


def assert_normal(w, std, what, rel=0.04):
    """N(0, std^2): sample std within rel (4 sigma of the estimate for these sizes), mean near 0, and the
    share within one std that of a normal (68.3%; a uniform gives 57.7%)."""
    x = w.detach().double().flatten()
    n = x.numel()
    assert abs(x.std().item() / std - 1) < rel, f"{what}: std {x.std().item():.5g}, the formula says {std:.5g}"
    assert abs(x.mean().item()) < 5 * std / n ** 0.5, what
    assert abs((x.abs() < std).double().mean().item() - 0.6827) < 5 * (0.22 / n) ** 0.5, f"{what}: not a normal"


def assert_uniform(w, bound, what, rel=0.04):
    """U(-bound, bound): every draw within the bound, the largest nearly at it, std = bound / sqrt(3)."""
    x = w.detach().double().flatten()
    n = x.numel()
    assert x.abs().max().item() <= bound * (1 + 1e-6), f"{what}: max |w| {x.abs().max().item():.5g} > bound {bound:.5g}"
    assert x.abs().max().item() >= bound * (1 - 20 / n), f"{what}: max |w| {x.abs().max().item():.5g} << bound {bound:.5g}"
    assert abs(x.std().item() / (bound / 3 ** 0.5) - 1) < rel, f"{what}: std {x.std().item():.5g}, bound {bound:.5g}"
    assert abs(x.mean().item()) < 5 * bound / (3 * n) ** 0.5, what


CONV_POLICIES = {
    # He et al.: N(0, gain^2 / fan), gain sqrt(2) for ReLU, mode fan_out (torchvision's ResNets; docs 3.10)
    "kaiming_normal": lambda fi, fo: ("normal", 2 ** 0.5 / fo ** 0.5),
    # PyTorch's layer default: kaiming_uniform with a = sqrt(5), mode fan_in: gain = sqrt(2 / (1 + 5)),
    # bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    "kaiming_uniform": lambda fi, fo: ("uniform", (2 / (1 + 5)) ** 0.5 * (3 / fi) ** 0.5),
    # Glorot: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    "xavier_uniform": lambda fi, fo: ("uniform", (6 / (fi + fo)) ** 0.5),
}
LINEAR_POLICIES = {
    "default": lambda fi, fo: ("uniform", (2 / (1 + 5)) ** 0.5 * (3 / fi) ** 0.5),   # nn.Linear's own: 1 / sqrt(fan_in)
    "xavier_uniform": lambda fi, fo: ("uniform", (6 / (fi + fo)) ** 0.5),
}


def test_every_init_policy_of_the_language_is_tested_here():
    from resgraph.spec.model import INIT_KEYS
    assert set(INIT_KEYS) == {"conv", "linear", "zero_residual"}
    assert set(INIT_KEYS["conv"]) == set(CONV_POLICIES) and INIT_KEYS["conv"][0] == "kaiming_normal"
    assert set(INIT_KEYS["linear"]) == set(LINEAR_POLICIES) and INIT_KEYS["linear"][0] == "default"


def assert_policy(m, convs, linears, conv_policy, linear_policy):
    for path, fi, fo in convs:
        kind, scale = CONV_POLICIES[conv_policy](fi, fo)
        w = m.get_submodule(path).weight
        (assert_normal if kind == "normal" else assert_uniform)(w, scale, f"{conv_policy} {path}")
    for path, fi, fo in linears:
        kind, scale = LINEAR_POLICIES[linear_policy](fi, fo)
        assert_uniform(m.get_submodule(path).weight, scale, f"{linear_policy} {path}")


@pytest.mark.parametrize("conv", list(CONV_POLICIES) + [None])
@pytest.mark.parametrize("linear", list(LINEAR_POLICIES) + [None])
def test_init_policies_follow_their_formulas(conv, linear):
    """None: the policy left out of the spec, which must be the documented default."""
    given = {k: v for k, v in (("conv", conv), ("linear", linear)) if v}
    m = fans("init: {" + ", ".join(f"{k}: {v}" for k, v in given.items()) + "}" if given else "")
    conv, linear = conv or "kaiming_normal", linear or "default"
    assert_policy(m, BIG_CONVS, BIG_LINEARS, conv, linear)
    # the inserted 1x1 Ws conv [32, 16, 1, 1] (fan_in 16, fan_out 32) follows the conv policy too: 512 draws
    kind, scale = CONV_POLICIES[conv](16, 32)
    ws = m.get_submodule("r.shortcut.conv").weight.detach().double()
    if kind == "normal":
        assert abs(ws.std().item() / scale - 1) < 0.15, (conv, ws.std().item(), scale)
    else:
        assert ws.abs().max().item() <= scale * (1 + 1e-6) and ws.abs().max().item() > 0.9 * scale, (conv, scale)
    # biases: a conv's as nn.Conv2d's default, U(+-1/sqrt(fan_in)) whatever the conv policy; a linear's as
    # nn.Linear's by default, zero with xavier_uniform
    for path, fan_in in (("conv1", 576), ("nobn.conv1", 32)):
        b = m.get_submodule(path).bias
        assert b.abs().max().item() <= fan_in ** -0.5 * (1 + 1e-6) and b.abs().max().item() > 0.5 * fan_in ** -0.5, path
    for path, fan_in in (("linear1", 1152), ("v.linear1", 64), ("linear2", 128)):
        b = m.get_submodule(path).bias
        if linear == "xavier_uniform":
            assert torch.equal(b, torch.zeros_like(b)), path
        else:
            assert b.abs().max().item() <= fan_in ** -0.5 * (1 + 1e-6) and b.abs().max().item() > 0.5 * fan_in ** -0.5, path
    # every bn starts at gamma 1, beta 0, fresh running statistics
    for name, bn in m.named_modules():
        if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias)), name
            assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)), name
            assert torch.equal(bn.running_var, torch.ones_like(bn.running_var)) and bn.num_batches_tracked.item() == 0, name


def test_init_weights_reinitialises_a_used_module_completely():
    """init_weights on a trained-looking module gives what a fresh one gets: running statistics reset too."""
    from resgraph.backends.torch.init import init_weights
    checked = check_text(FANS % "init: {zero_residual: true}")
    fresh = resgraph.to_torch(checked, seed=3)
    used = resgraph.to_torch(checked, seed=4).train()
    with torch.no_grad():
        used(torch.randn(4, 64, 6, 6))
        for p in used.parameters():
            p.add_(1.0)
    init_weights(used, checked.graph, seed=3)
    for (k, a), b in zip(fresh.state_dict().items(), used.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("zero", [True, False, None])
def test_zero_residual_zeroes_exactly_the_last_bn_of_each_residual_body(zero):
    m = fans("" if zero is None else f"init: {{zero_residual: {str(zero).lower()}}}")
    # written out by hand from FANS: r and both copies of `basic` end their body with bn2; `nobn` has no bn
    # (left as it is); v's body ends with a bn on vectors. Not zeroed: the stem's bn1, the bodies' first bns,
    # the inserted Ws's bn (r.shortcut.bn) and `after`, a bn outside any residual.
    zeroed = {"r.bn2", "stage.0.bn2", "stage.1.bn2", "v.bn1"} if zero else set()
    bns = {name: bn for name, bn in m.named_modules() if isinstance(bn, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))}
    assert set(bns) == {"bn1", "r.bn1", "r.bn2", "r.shortcut.bn", "stage.0.bn1", "stage.0.bn2", "stage.1.bn1",
                        "stage.1.bn2", "after", "v.bn1"}
    for name, bn in bns.items():
        assert torch.equal(bn.weight, torch.full_like(bn.weight, 0.0 if name in zeroed else 1.0)), name
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias)), name
    # the rest of the initialisation does not move: the same seed gives the same other tensors
    plain = fans().state_dict()
    for k, v in m.state_dict().items():
        if k.removesuffix(".weight") not in zeroed:
            assert torch.equal(v, plain[k]), k


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


# --- zero_residual in the modern residual families ------------------------------------------------
# One small spec per family, each with identity blocks and a block with a Ws. What is zeroed is the last
# norm or layer scale on the body's path to the add (see zero_residual_layers), chosen as the references do.
FAMILY_HEAD = "resgraph: 1\nname: %s\ninput: {shape: [3, 8, 8]}\ninit: {zero_residual: true}\ndefaults:\n  conv: {bias: false}\n"
FAMILIES = {
    # SE-ResNet (Hu et al. 2018) as timm's seresnet: conv3x3-bn-relu-conv3x3-bn, SE gate, drop_path, add,
    # relu. The SE carries its own bn (timm's SEModule(norm_layer=...)) and a hardsigmoid gate, and is the
    # main input of the mul: the last bn written and the mul's main input both lead to the gate. timm's
    # zero_init_last zeroes bn2, the bn before the SE; so do we (`feat`).
    "se_resnet": ("""blocks:
  se_basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - bn
        - relu
        - conv: {out: $out, kernel: 3}
        - bn: {id: feat}
        - global_avgpool
        - conv: {out: 4, kernel: 1, bias: true}
        - bn: {id: se_bn}
        - relu
        - conv: {out: $out, kernel: 1, bias: true}
        - hardsigmoid: {id: gate}
        - mul: {from: [feat]}
        - drop_path: {p: 0.5}
      post: relu
layers:
  - conv: {out: 16, kernel: 3}
  - bn
  - relu
  - se_basic: {id: layer1, out: 16, repeat: 2}
  - se_basic: {id: layer2, out: 32, repeat: 2, first: {stride: 2}}
  - global_avgpool
  - flatten
  - linear: {out: 10}
""", "{}.feat", 4),
    # ConvNeXt (Liu et al. 2022): dwconv7x7-layernorm-pwconv-gelu-pwconv, layer scale (1e-6), drop_path,
    # no post activation. The scale comes after the last norm: it is zeroed, not the layernorm (a zero
    # layernorm would leave pwconv's biases through the MLP).
    "convnext": ("""blocks:
  cnblock:
    args: {dim: null}
    residual:
      layers:
        - conv: {out: $dim, kernel: 7, groups: $dim, bias: true}
        - layernorm: {eps: 1.0e-6}
        - conv: {out: "$dim * 4", kernel: 1, bias: true}
        - gelu
        - conv: {out: $dim, kernel: 1, bias: true}
        - scale: {init: 1.0e-6}
        - drop_path: {p: 0.5}
layers:
  - conv: {out: 16, kernel: 2, stride: 2, bias: true}
  - layernorm: {eps: 1.0e-6}
  - cnblock: {id: stage1, dim: 16, repeat: 2}
  - residual:
      id: down
      layers:
        - layernorm: {eps: 1.0e-6}
        - conv: {out: 32, kernel: 2, stride: 2, bias: true}
        - scale
  - cnblock: {id: stage2, dim: 32, repeat: 2}
  - global_avgpool
  - flatten
  - layernorm
  - linear: {out: 10}
""", "{}.scale1", 5),
    # MBConv (MobileNetV3 / EfficientNet): expand-bn-hardswish, depthwise-bn-hardswish, SE (hardsigmoid
    # gate on the `from` side of the mul), project-bn, drop_path. The SE sits before the projection, so
    # the last bn is bn3, as in timm's EfficientNet blocks and RegNet's (zero_init_last: conv3.bn).
    "mbconv": ("""blocks:
  mbconv:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: "$out * 4", kernel: 1}
        - bn
        - hardswish
        - conv: {out: "$out * 4", kernel: 3, stride: $stride, groups: "$out * 4"}
        - bn
        - hardswish: {id: x}
        - global_avgpool
        - conv: {out: 8, kernel: 1, bias: true}
        - relu
        - conv: {out: "$out * 4", kernel: 1, bias: true}
        - hardsigmoid
        - mul: {from: [x]}
        - conv: {out: $out, kernel: 1}
        - bn
        - drop_path: {p: 0.5}
layers:
  - conv: {out: 16, kernel: 3}
  - bn
  - hardswish
  - mbconv: {id: b1, out: 16, repeat: 2}
  - mbconv: {id: b2, out: 24, repeat: 2, first: {stride: 2}}
  - global_avgpool
  - flatten
  - linear: {out: 10}
""", "{}.bn3", 4),
    # a ResNet with group norm (Wu & He 2018, who zero the last GN's gamma of each block)
    "groupnorm": ("""blocks:
  gn_basic:
    args: {out: null, stride: 1}
    residual:
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - groupnorm: {groups: 4}
        - silu
        - conv: {out: $out, kernel: 3}
        - groupnorm: {groups: 4}
      post: relu
layers:
  - conv: {out: 16, kernel: 3}
  - groupnorm: {groups: 4}
  - relu
  - gn_basic: {id: layer1, out: 16, repeat: 2}
  - gn_basic: {id: layer2, out: 32, repeat: 2, first: {stride: 2}}
  - global_avgpool
  - flatten
  - linear: {out: 10}
""", "{}.groupnorm2", 4),
}


def family(name: str, zero: bool = True):
    text, _, _ = FAMILIES[name]
    head = FAMILY_HEAD % name
    return check_text((head if zero else head.replace("init: {zero_residual: true}\n", "")) + text)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_zero_residual_makes_every_block_of_each_family_exactly_its_shortcut(name, mode):
    """torch.equal, not allclose: each body starts at exactly 0, through an SE gate and through drop_path
    in training, so each identity block computes exactly post(input) and each block with a Ws post(Ws a)."""
    from resgraph.backends.torch.init import zero_residual_layers
    checked = family(name)
    g = checked.graph
    adds = [n for n in g.nodes if n.op == "add" and n.role == "add"]
    _, which, count = FAMILIES[name]
    want = ["down.scale1" if a.path == "down" else which.format(a.path) for a in adds]   # down: ConvNeXt's
    assert zero_residual_layers(g) == [(p, True) for p in want]                          # downsampling block
    assert len(adds) == count
    m = resgraph.to_torch(checked, seed=0).train(mode == "train")
    for p in want:
        assert torch.equal(m.get_submodule(p).weight, torch.zeros_like(m.get_submodule(p).weight)), p
    torch.manual_seed(0)
    _, v = capture(m, torch.randn(16, 3, 8, 8))
    projected = {p.at for p in g.projections}
    assert projected and len(projected) < len(adds)   # both kinds of block are tested
    for add in adds:
        body, shortcut = v[add.inputs[0]], v[add.inputs[1]]
        assert torch.equal(body, torch.zeros_like(body)), add.path
        out = v[add.path + ".post"] if add.path + ".post" in v else v[add.path]
        post = torch.relu if add.path + ".post" in v else (lambda t: t)
        assert torch.equal(out, post(shortcut)), add.path       # post(0 + Ws a), exactly
        if add.path not in projected:
            assert add.inputs[1] == g[add.path].args["from"][0]  # the block's own input: the identity
    drops = [n.path for n in g.nodes if n.op == "drop_path"]
    assert all(m.get_submodule(p).training == (mode == "train") for p in drops)   # drawing masks in training
    # without zero_residual no block is its shortcut: the test above is not vacuous
    m0 = resgraph.to_torch(family(name, zero=False), seed=0).train(mode == "train")
    _, v0 = capture(m0, torch.randn(16, 3, 8, 8))
    assert not any(torch.equal(v0[a.inputs[0]], torch.zeros_like(v0[a.inputs[0]])) for a in adds)


def test_zero_residual_drop_path_in_training_is_still_the_identity_and_drops_otherwise():
    """drop_path (p = 0.5) zeroes some samples of a non-zero body in training; with zero_residual the
    body is 0 for every sample, dropped or kept, so each identity block is exactly post(input)."""
    checked = family("se_resnet")
    m = resgraph.to_torch(checked, seed=0).train()
    with torch.no_grad():
        m.get_submodule("layer1.0.feat").weight.fill_(1.0)      # this block's body is no longer 0
    torch.manual_seed(1)
    _, v = capture(m, torch.randn(64, 3, 8, 8))
    before, after = v["layer1.0.mul1"], v["layer1.0.drop_path1"]
    kept = after.flatten(1).abs().sum(1) != 0
    assert 0 < kept.sum() < 64                                   # some samples dropped, some kept
    assert torch.equal(after[kept], before[kept] / 0.5)         # kept ones rescaled by 1 / (1 - p)
    add = checked.graph["layer1.1"]
    assert torch.equal(v["layer1.1.post"], torch.relu(v[add.inputs[1]]))   # the next block: still exact


ZR_RULE = """resgraph: 1
name: rule
input: {shape: [4, 6, 6]}
init: {zero_residual: true}
layers:
  - residual:
      id: preact                  # pre-activation (He et al. 2016b): a bias-free conv keeps 0
      layers:
        - bn
        - relu
        - conv: {out: 4, kernel: 3, bias: false}
        - bn
        - relu
        - conv: {out: 4, kernel: 3, bias: false}
  - residual:
      id: biased                  # a conv with a bias after the last bn: zeroed, but not exactly 0
      layers:
        - conv: {out: 4, kernel: 3}
        - bn
        - relu
        - conv: {out: 4, kernel: 1}
  - residual:
      id: glu                     # two zeroable inputs of a mul: the later one
      layers:
        - bn: {id: a}
        - bn: {id: b, in: input}
        - mul: {in: b, from: [a]}
  - residual:
      id: outer                   # a nested block's layers are its own; the outer zeroes its bn
      layers:
        - conv: {out: 4, kernel: 3, bias: false}
        - bn: {id: mine}
        - residual:
            id: inner
            layers:
              - conv: {out: 4, kernel: 3, bias: false}
              - bn
  - residual:
      id: none                    # no norm or scale: left as it is
      layers:
        - conv: {out: 4, kernel: 1}
"""


def test_zero_residual_rule_on_the_edges():
    from resgraph.backends.torch.init import zero_residual_layers
    g = check_text(ZR_RULE).graph
    assert zero_residual_layers(g) == [("preact.bn2", True), ("biased.bn1", False), ("glu.b", True),
                                       ("outer.inner.bn1", True), ("outer.mine", False)]
    assert last_bn_of_each_residual_body(g) == ["preact.bn2", "biased.bn1", "glu.b", "outer.inner.bn1", "outer.mine"]
    m = resgraph.to_torch(g, seed=0).eval()
    _, v = capture(m, torch.randn(2, 4, 6, 6))
    assert torch.equal(v["preact"], v["input"])                               # exactly the identity
    assert not torch.equal(v["biased"], v["preact"]) and torch.equal(v["biased.bn1"], torch.zeros(2, 4, 6, 6))
    assert torch.equal(v["outer.inner"], v["outer.mine"])                     # inner: exactly its shortcut


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
