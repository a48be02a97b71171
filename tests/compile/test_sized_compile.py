"""A spec with size variables compiles once to a model with symbolic dims (batch, H, W, and the
outputs' expressions of them), which at each valid size computes what the same spec compiled at that
fixed size computes, with the same weights; and which refuses the sizes its graph cannot take."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from spec.test_io import TWO_STREAMS
from spec.test_sizes import UNET_VALID, sized

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def _compile(path, out, *args):
    p = run_cli("compile", path, "-o", str(out), *args, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "manifest.json").read_text())


def _fixed(text: str, at: dict) -> str:
    """The spec at one size: its sizes: block gone, each input's [C, H, W] at `at`."""
    import re
    text = re.sub(r"^sizes:\n(  .*\n)+", "", text, flags=re.M)
    return re.sub(r"\[(\d+), H, W\]", lambda m: f"[{m[1]}, {at['H']}, {at['W']}]", text)


CASES = {
    "unet": (sized(UNET_VALID, "  H: {min: 1, max: 130}\n  W: {min: 1, max: 130}\n"),
             [{"H": 6, "W": 6}, {"H": 66, "W": 38}, {"H": 130, "W": 130}]),
    "two_streams": (TWO_STREAMS.replace("[3, 32, 32]", "[3, H, W]").replace("[1, 32, 32]", "[1, H, W]").replace(
        "inputs:", "sizes:\n  H: {min: 8, max: 64}\n  W: {min: 8, max: 64}\ninputs:"),
        [{"H": 8, "W": 8}, {"H": 37, "W": 50}, {"H": 64, "W": 64}]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_once_it_equals_the_fixed_size_compile_at_three_sizes(name, write_spec, tmp_path):
    import onnx

    from resgraph.runtime import open_session
    text, sizes = CASES[name]
    m = _compile(write_spec(text), tmp_path / "dynamic")
    model = onnx.load(str(tmp_path / "dynamic" / "model.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert [t["name"] for t in m["inputs"] + m["outputs"]] == list(dims)
    assert all(dims[t["name"]] == t["shape"] for t in m["inputs"] + m["outputs"]), (dims, m["outputs"])
    assert dims[m["inputs"][0]["name"]][2:] == ["H", "W"] and set(m["sizes"]) == {"H", "W"}
    dynamic = open_session(str(tmp_path / "dynamic"), "ort-cpu")
    weights = str(tmp_path / "dynamic" / "weights.safetensors")
    for k, at in enumerate(sizes):
        fixed_path = write_spec(_fixed(text, at), f"fixed{k}.yaml")
        _compile(fixed_path, tmp_path / f"fixed{k}", "--weights", weights)
        fixed = open_session(str(tmp_path / f"fixed{k}"), "ort-cpu")
        rng = np.random.default_rng(k)
        feeds = {t.name: rng.standard_normal((2, *t.at(at)), dtype=np.float32) for t in dynamic.inputs}
        got, want = dynamic.run_all(feeds), fixed.run_all(feeds)
        assert list(got) == [t.name for t in dynamic.outputs] == list(want)
        for out in got:
            assert got[out].shape == want[out].shape == (2, *next(t for t in dynamic.outputs if t.name == out).at(at))
            np.testing.assert_allclose(got[out], want[out], rtol=0, atol=1e-5, err_msg=f"{name} {out} at {at}")


def test_a_size_the_graph_cannot_take_is_refused_with_the_nearest_valid_sizes(write_spec, tmp_path):
    from resgraph.errors import DataError
    from resgraph.runtime import open_session
    _compile(write_spec(CASES["unet"][0]), tmp_path / "unet")
    s = open_session(str(tmp_path / "unet"), "ort-cpu")
    assert s.sizes["H"].valid == tuple(range(6, 131, 4))
    with pytest.raises(DataError, match=r"H = 64 is not a size the model takes \(every 4th size from 6 to 130\)") as e:
        s.run(np.zeros((1, 3, 64, 66), np.float32))
    assert "the nearest valid sizes are 62 or 66" in e.value.diagnostics[0].hint
    with pytest.raises(DataError, match=r"a batch of shape \[1, 1, 66, 66\], but the model takes \[N, 3, H, W\]"):
        s.run(np.zeros((1, 1, 66, 66), np.float32))
    assert s.run(np.zeros((1, 3, 66, 70), np.float32)).shape == (1, 2, 64, 68)


UPSAMPLED = """resgraph: 1
name: up_after_stride
sizes: {H: {min: 4, max: 40}, W: {min: 4, max: 40}}
input: {shape: [3, H, W]}
layers:
  - conv: {out: 4, kernel: 3, stride: 2}
  - relu
  - upsample: {scale: 2}
  - conv: {out: 2, kernel: 1}
"""


def test_an_output_upsampled_after_a_stride_is_an_expression_the_runtime_evaluates(write_spec, tmp_path):
    """2 * ceil(H / 2): an odd input gives one row more; the manifest's dims are evaluated per request."""
    import math

    from resgraph.manifest import evaluate_dim
    from resgraph.runtime import open_session
    from resgraph.sized import expression
    sizes = list(range(5, 300))
    for f, want in ((lambda n: 2 * math.ceil(n / 2), "2 * ceil(H / 2)"), (lambda n: 4 * ((n - 1) // 4), "4 * floor((H - 1) / 4)")):
        e = expression("H", sizes, [f(n) for n in sizes])
        assert e == want and all(evaluate_dim(e, {"H": n}) == f(n) for n in sizes)
    m = _compile(write_spec(UPSAMPLED), tmp_path / "up")
    assert m["outputs"][0]["shape"] == ["batch", 2, "2 * ceil(H / 2)", "2 * ceil(W / 2)"]
    s = open_session(str(tmp_path / "up"), "ort-cpu")
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 12), dtype=np.float32)
    assert s.output_shapes({"input": x}) == {"output": (1, 2, 10, 12)}
    y = s.run(x)
    assert y.shape == (1, 2, 10, 12)
    np.testing.assert_allclose(y, open_session(str(tmp_path / "up"), "torch-cpu").run(x), atol=1e-5)
