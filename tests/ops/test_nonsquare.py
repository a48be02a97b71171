"""Non-square kernels, strides, dilations and paddings ([height, width]): shapes as PyTorch computes
them, the same numbers in PyTorch and ONNX Runtime, both importers reading them back, and mistakes
located in the spec."""
import itertools

import pytest
import torch
from torch import nn

import resgraph
from resgraph.errors import SpecError

SPEC = """resgraph: 1
name: inception_tiny
input: {name: image, shape: [3, 17, 15]}
output: {name: logits}
defaults:
  conv: {bias: false}
layers:
  - conv: {id: stem, out: 16, kernel: 3}
  - bn
  - relu
  - residual:
      id: b1
      layers:
        - conv: {out: 16, kernel: [1, 7]}
        - bn
        - relu
        - conv: {out: 16, kernel: [7, 1]}
        - bn
      post: relu
  - conv: {id: c, out: 8, kernel: [3, 2], stride: [2, 1], dilation: [1, 2], padding: [1, 0]}
  - maxpool: {id: p, kernel: [3, 1], stride: [2, 1], padding: [1, 0]}
  - global_avgpool
  - flatten
  - linear: {id: fc, out: 10}
"""


def _spec_conv(k, s, d, p):
    text = (f"resgraph: 1\nname: one\ninput: {{name: x, shape: [2, 11, 9]}}\nlayers:\n"
            f"  - conv: {{out: 3, kernel: {list(k)}, stride: {list(s)}, dilation: {list(d)}, padding: {list(p)}}}\n")
    return resgraph.check_text(text)


def test_shapes_and_counts_are_torchs():
    """Every combination of per-axis kernel, stride, dilation and padding: the checker's shape and
    params are what nn.Conv2d gives, and the emitted module computes F.conv2d with those tuples."""
    x = torch.randn(1, 2, 11, 9)
    for k, s, d, p in itertools.product([(1, 3), (2, 1)], [(1, 2), (2, 1)], [(1, 2)], [(0, 1), (1, 0)]):
        c = _spec_conv(k, s, d, p)
        ref = nn.Conv2d(2, 3, k, s, p, d)
        with torch.no_grad():
            want = ref(x)
            m = resgraph.to_torch(c, seed=0)
            m.get_submodule("conv1").load_state_dict(ref.state_dict())
            assert torch.equal(m(x), want), (k, s, d, p)
        assert c.graph.nodes[-1].shape == tuple(want.shape[1:]) and c.params == sum(t.numel() for t in ref.parameters())


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
def test_pools_are_torchs(op):
    """Pools per axis: the checker's shapes and the module's values are F.max_pool2d's and
    F.avg_pool2d's (padding never counted), and ONNX Runtime gives the same."""
    import numpy as np
    import onnxruntime as ort
    import torch.nn.functional as F

    from resgraph.backends.onnx import to_onnx
    x = torch.randn(2, 2, 11, 9)
    for k, s, p, ceil in [((3, 1), (2, 1), (1, 0), False), ((1, 3), (1, 2), (0, 1), True), ((2, 3), (2, 3), (0, 0), True)]:
        text = (f"resgraph: 1\nname: one\ninput: {{name: x, shape: [2, 11, 9]}}\nlayers:\n"
                f"  - {op}: {{kernel: {list(k)}, stride: {list(s)}, padding: {list(p)}, ceil_mode: {str(ceil).lower()}}}\n")
        c = resgraph.check_text(text)
        want = F.max_pool2d(x, k, s, p, ceil_mode=ceil) if op == "maxpool" else \
            F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=False)
        got = resgraph.to_torch(c)(x)
        assert c.graph.nodes[-1].shape == tuple(want.shape[1:]) and torch.equal(got, want), (k, s, p, ceil)
        sess = ort.InferenceSession(to_onnx(c.graph, {}).SerializeToString(), providers=["CPUExecutionProvider"])
        assert np.abs(sess.run(None, {"x": x.numpy()})[0] - want.numpy()).max() <= 1e-6, (k, s, p, ceil)


def test_onnx_runtime_and_both_importers(tmp_path):
    """Compiled, ONNX Runtime gives PyTorch's numbers; resgraph import reads the ONNX file and the
    PyTorch module back to the same kernels, strides, dilations and paddings."""
    import numpy as np
    import onnxruntime as ort

    from resgraph.backends.importer import import_model
    from resgraph.compile import compile_spec
    spec = tmp_path / "inception_tiny.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "c"
    compile_spec(str(spec), out=str(out), fold=False)
    m = resgraph.to_torch(str(spec), weights=str(out / "weights.safetensors")).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 17, 15), dtype=np.float32)
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        assert np.abs(got - m(torch.from_numpy(x)).numpy()).max() <= 1e-4
    want = [dict(n.args) for n in resgraph.check_text(SPEC).graph.nodes if n.op == "conv"]
    for source in (str(out / "model.onnx"), m):
        back = import_model(source, input_shape=(3, 17, 15))
        assert [dict(n.args) for n in back.checked.graph.nodes if n.op == "conv" and not n.inserted] == \
            [a for a in want if a["kernel"] != 1], type(source)
        assert "kernel: [1, 7]" in back.text and "stride: [2, 1]" in back.text
        pools = [dict(n.args) for n in back.checked.graph.nodes if n.op == "maxpool"]
        assert pools == [{"kernel": (3, 1), "stride": (2, 1), "padding": "same", "ceil_mode": False}], back.text   # = [1, 0]


@pytest.mark.parametrize("change, says, message", [
    ("kernel: [1, 7]", "kernel: [1, 7, 1]", "'kernel' must be an integer or [height, width], got [1, 7, 1]"),
    ("padding: [1, 0]", "padding: [1, 0, 1]", "must be 'same', 'valid', an integer or [height, width]"),
    ("kernel: [7, 1]}", "kernel: [7, 1], stride: [2, 1]}", "no integer stride maps [16, 17, 15] to [16, 9, 15]"),
    ("kernel: [3, 2]", "kernel: [3, 0]", "'kernel[1]' must be"),
])
def test_mistakes_are_located(change, says, message):
    text = SPEC.replace(change, says)
    with pytest.raises(SpecError) as e:
        resgraph.check_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if says in t)
    assert message in e.value.message and e.value.hint, e.value.message
    at = text.splitlines()[e.value.line - 1]
    assert e.value.line == line or "- residual:" in at, (e.value.line, line)   # a Ws: at its residual
