"""split and chunk: one node per part, named <id>.k, each exactly torch.split's / torch.chunk's part in
PyTorch and in ONNX Runtime; their mistakes located in the spec."""
import numpy as np
import pytest
import torch

import resgraph
from resgraph.errors import SpecError

SPEC = """resgraph: 1
name: parts
input: {name: x, shape: [6, 5, 5]}
output: {name: y}
layers:
  - conv: {id: c, out: 6, kernel: 3}
  - split: {id: s, sizes: [1, 2, 3]}
  - chunk: {id: h, chunks: 2, in: c}
  - concat: {in: s.2, from: [h.1, s.0, h.0, s.1]}
"""


def _reference(m, x):
    """The same network written with torch.split and torch.chunk."""
    c = m.get_submodule("c")(x)
    s, h = torch.split(c, [1, 2, 3], 1), torch.chunk(c, 2, 1)
    return torch.cat([s[2], h[1], s[0], h[0], s[1]], 1)


def test_parts_are_torchs_and_onnx_runtimes(tmp_path):
    from resgraph.backends.onnx import to_onnx
    import onnxruntime as ort
    checked = resgraph.check_text(SPEC)
    g = checked.graph
    assert [(n.path, n.shape) for n in g.nodes if n.op in ("split", "chunk")] == [
        ("s.0", (1, 5, 5)), ("s.1", (2, 5, 5)), ("s.2", (3, 5, 5)), ("h.0", (3, 5, 5)), ("h.1", (3, 5, 5))]
    m = resgraph.to_torch(checked, seed=0).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        want, got = _reference(m, x), m(x)
    assert torch.equal(got, want)
    model = to_onnx(g, {k: v.numpy() for k, v in m.state_dict().items()})
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(s.run(None, {"x": x.numpy()})[0] - want.numpy()).max() <= 1e-5


@pytest.mark.parametrize("change, says", [
    ("sizes: [1, 2, 3]", "sizes: [1, 2, 4]", ),
    ("chunks: 2", "chunks: 4"),
    ("chunks: 2", "chunks: 2, part: 1"),
    ("from: [h.1,", "from: [h.3,"),
    ("sizes: [1, 2, 3]", "sizes: [1, 2.5, 3]"),
])
def test_mistakes_are_located(change, says):
    text = SPEC.replace(change, says)
    with pytest.raises(SpecError) as e:
        resgraph.check_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if says in t)
    want = {"sizes: [1, 2, 4]": "split sizes [1, 2, 4] add up to 7, but the input has 6 channels",
            "chunks: 4": "chunk: 6 channels do not make 4 equal parts",
            "chunks: 2, part: 1": "'part' is set by resgraph, one node per part",
            "from: [h.3,": "unknown id 'h.3'",
            "sizes: [1, 2.5, 3]": "'sizes[1]' must be an integer, got 2.5"}[says]
    assert want in e.value.message and e.value.line == line and e.value.hint, (e.value.message, e.value.line)
