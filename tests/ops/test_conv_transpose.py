"""conv_transpose: its shape rule against PyTorch's own output sizes, 'same' meaning exactly in × stride,
its counts against PyTorch's parameters and FlopCounterMode, its errors, and parity with ONNX Runtime."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import resgraph  # noqa: E402
from resgraph.backends.onnx import to_onnx  # noqa: E402
from resgraph.errors import SpecError  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402
from test_counts import assert_macs_match_the_counter  # noqa: E402


def spec(c, h, w, **args):
    flow = ", ".join(f"{k}: {v}" for k, v in args.items())
    return f"resgraph: 1\nname: t\ninput: {{shape: [{c}, {h}, {w}]}}\nlayers:\n  - conv_transpose: {{{flow}}}\n"


CASES = [dict(out=4, kernel=k, stride=s, dilation=d, padding=p, output_padding=q)
         for k, s, d, p in itertools.product((1, 2, 3, 4), (1, 2, 3), (1, 2), ("same", "valid", 1, 2))
         for q in ((0,) if p == "same" else range(max(s, d)))]


@pytest.mark.parametrize("h,w", [(5, 7)])
def test_the_shape_rule_is_pytorchs(h, w):
    """Every (kernel, stride, dilation, padding, output_padding) the rule accepts: the module built from
    it gives exactly the inferred shape; 'same' gives in × stride; what it refuses PyTorch cannot build."""
    accepted = 0
    for a in CASES:
        try:
            c = check_text(spec(2, h, w, **a))
        except SpecError as e:
            assert a["padding"] == "same" or "collapses" in e.message, (a, e.message)
            continue
        accepted += 1
        m = resgraph.to_torch(c, seed=0)
        y = m(torch.zeros(1, 2, h, w))
        assert tuple(y.shape[1:]) == c.graph[c.graph.output].shape, a
        if a["padding"] == "same":
            assert y.shape[2:] == (h * a["stride"], w * a["stride"]), a
    assert accepted > 150


def test_same_with_an_even_kernel_at_stride_1_is_refused_with_the_reason():
    with pytest.raises(SpecError) as e:
        check_text(spec(2, 5, 5, out=4, kernel=2, stride=1))
    assert e.value.line == 5 and "unevenly" in e.value.message and "odd kernel" in e.value.hint


@pytest.mark.parametrize("args,words", [
    (dict(out=4, kernel=3, stride=2, output_padding=1), "remove output_padding"),
    (dict(out=4, kernel=3, stride=2, padding=1, output_padding=2), "smaller than the stride"),
    (dict(out=3, kernel=3, stride=2, groups=2), "groups=2 must divide"),
    (dict(out=4, kernel=1, stride=1, padding=3), "collapses"),
])
def test_located_errors(args, words):
    with pytest.raises(SpecError) as e:
        check_text(spec(2, 5, 5, **args))
    assert e.value.line == 5 and words in e.value.message + e.value.hint


@pytest.mark.parametrize("args", [dict(out=6, kernel=3, stride=2, groups=2), dict(out=4, kernel=4, stride=2, padding=1),
                                  dict(out=3, kernel=2, stride=2, bias="false")])
def test_counts_equal_pytorchs_parameters_and_the_flop_counter(args):
    assert_macs_match_the_counter(check_text(spec(4, 6, 5, **args)), device="cpu")


UNET_UP = """resgraph: 1
name: up
input: {shape: [8, 6, 6]}
layers:
  - conv: {out: 8, kernel: 3, stride: 2, bias: false, id: down}
  - bn
  - relu
  - conv_transpose: {out: 8, kernel: 2, stride: 2, bias: false}
  - bn
  - relu
  - concat: {from: [input]}
  - conv_transpose: {out: 3, kernel: 3, stride: 2, padding: 1, output_padding: 1, dilation: 2, groups: 1}
"""


def test_parity_with_onnx_runtime_folded_and_unfolded():
    c = check_text(UNET_UP)
    m = resgraph.to_torch(c, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():   # non-trivial statistics, so a wrong fold would show
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(generator=g)
                mod.running_var.uniform_(0.5, 2, generator=g)
                mod.weight.normal_(generator=g)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert ref.shape[1:] == c.graph[c.graph.output].shape == (3, 14, 14)   # (6-1)*2 - 2*1 + 2*(3-1) + 1 + 1
    w = {k: v.numpy() for k, v in m.state_dict().items()}
    for fold in (False, True):
        model = to_onnx(*for_inference(c.graph, w, fold=fold))
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = s.run(None, {s.get_inputs()[0].name: x})[0]
        assert np.abs(got - ref).max() <= 1e-4, fold
