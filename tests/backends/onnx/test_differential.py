"""Differential testing of the two back ends: random valid specs (every op, random arguments, residual
blocks with every shortcut policy, skip edges) must give the same outputs from the PyTorch module and
from ONNX Runtime on the lowered ONNX, folded and unfolded. The shipped specs exercise the common
arguments; this exercises the corners (even kernels with 'same' padding, ceil_mode with padding,
dilation, groups, bilinear upsampling of odd sizes, eps from defaults, ...)."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from resgraph.backends.onnx import to_onnx, validate  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.errors import SpecError  # noqa: E402
from resgraph.passes.inference import for_inference  # noqa: E402
from test_onnx_backend import ort_run, random_weights, torch_eval  # noqa: E402

ACTIVATIONS = ["relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "identity"]


def ided(entry, name: str):
    """The entry with an id, for skip edges to it."""
    if isinstance(entry, str):
        return {entry: {"id": name}}
    (op, args), = entry.items()
    return {op: {**args, "id": name}}


def flow(y: dict) -> str:
    return json.dumps(y)   # JSON is YAML: one flow mapping per entry


@st.composite
def map_layer(draw, c: int):
    """One entry on feature maps with c channels, and the channels it leaves."""
    kind = draw(st.sampled_from(["conv", "conv", "bn", "act", "leaky_relu", "maxpool", "avgpool", "upsample",
                                 "dropout", "project", "conv_transpose"]))
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if c % g == 0]))
        out = groups * draw(st.integers(1, 3))
        k = draw(st.integers(1, 4))
        pad = draw(st.sampled_from(["same", "valid", 0, 1, 2]))
        args = {"out": out, "kernel": k, "stride": draw(st.integers(1, 2)), "padding": pad,
                "dilation": draw(st.integers(1, 2)), "groups": groups, "bias": draw(st.booleans())}
        return {"conv": args}, out
    if kind == "conv_transpose":   # 'same' (= in * stride) or explicit padding and output_padding
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
        out, k, s, d = groups * draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        pad = draw(st.sampled_from(["same", "valid", 0, 1, 2]))
        q = 0 if pad == "same" else draw(st.integers(0, max(s, d) - 1))
        args = {"out": out, "kernel": k, "stride": s, "padding": pad, "output_padding": q, "dilation": d,
                "groups": groups, "bias": draw(st.booleans())}
        return {"conv_transpose": args}, out
    if kind == "bn":
        return ({"bn": {"eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]))}} if draw(st.booleans()) else "bn"), c
    if kind == "act":
        return draw(st.sampled_from(ACTIVATIONS)), c
    if kind == "leaky_relu":
        return {"leaky_relu": {"slope": draw(st.sampled_from([0.01, 0.2, 1.5]))}}, c
    if kind in ("maxpool", "avgpool"):
        k = draw(st.integers(1, 3))
        args = {"kernel": k, "stride": draw(st.integers(0, 2)), "padding": draw(st.sampled_from(["same", "valid", 0, 1])),
                "ceil_mode": draw(st.booleans())}
        return {kind: args}, c
    if kind == "upsample":
        return {"upsample": {"scale": draw(st.integers(1, 2)), "mode": draw(st.sampled_from(["nearest", "bilinear"]))}}, c
    if kind == "dropout":
        return {"dropout": {"p": 0.3}}, c
    out = draw(st.integers(1, 8))
    return {kind: {"out": out, "stride": draw(st.integers(1, 2))}}, out


@st.composite
def specs(draw):
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(5, 12)), draw(st.integers(5, 12))
    lines = ["resgraph: 1", "name: fuzz", f"input: {{name: x, shape: [{c}, {h}, {w}]}}"]
    if draw(st.booleans()):
        lines.append(f"defaults: {{bn: {{eps: {draw(st.sampled_from([1e-3, 0.05]))}}}}}")
    lines.append(f"shortcut: {draw(st.sampled_from(['projection', 'zeropad', 'avgpool_projection']))}")
    lines.append("layers:")
    entries = []
    for i in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 3)) == 0:   # a residual block: a[l+2] = post(body(a[l]) + Ws a[l])
            body = []
            for _ in range(draw(st.integers(1, 3))):
                layer, c2 = draw(map_layer(c))
                body.append(layer)
                c = c2 or c
            block = {"layers": body, "post": draw(st.sampled_from(["relu", "identity"]))}
            if draw(st.booleans()):
                block["shortcut"] = draw(st.sampled_from(["projection", "zeropad", "avgpool_projection"]))
            entries.append({"residual": block})
        else:
            layer, c2 = draw(map_layer(c))
            entries.append(layer)
            c = c2 or c
        entries[-1] = ided(entries[-1], f"e{i}")
        if i and draw(st.integers(0, 4)) == 0:   # a skip edge from an earlier entry (check refuses a size mismatch)
            entries.append({draw(st.sampled_from(["concat", "add"])): {"from": [f"e{draw(st.integers(0, i - 1))}"]}})
    if draw(st.booleans()):   # a vector tail
        entries += ["global_avgpool", "flatten"]
        if draw(st.booleans()):
            entries += [{"linear": {"out": draw(st.integers(2, 6)), "bias": draw(st.booleans())}}, "bn"]
        if draw(st.booleans()):   # a residual block on vectors: Ws is a bias-free linear, or zero padding
            body = [{"linear": {"out": draw(st.integers(2, 8))}}, draw(st.sampled_from(ACTIVATIONS)),
                    {"linear": {"out": draw(st.integers(2, 8))}}, {"dropout": {"p": 0.2}}]
            entries.append({"residual": {"layers": body, "post": "relu",
                                         "shortcut": draw(st.sampled_from(["projection", "zeropad"]))}})
        entries.append({"linear": {"out": 3}})
        if draw(st.booleans()):
            entries.append("softmax")
    lines += [f"  - {flow(e) if not isinstance(e, str) else e}" for e in entries]
    return "\n".join(lines) + "\n"


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(specs())
def test_pytorch_and_onnx_runtime_agree_on_random_specs(text):
    try:
        checked = check_text(text, "fuzz.yaml")
    except SpecError as e:
        event(f"refused by check: {e.diagnostics[0].message.split(':')[0][:40]}")
        return   # shapes that do not fit: the checker's job, tested elsewhere
    event("compiled and compared")
    note(text)
    g = checked.graph
    w = random_weights(g)
    x = np.random.default_rng(0).standard_normal((2, *g.nodes[0].shape)).astype(np.float32)
    ref = torch_eval(g, w, x)
    assert ref.shape[1:] == g[g.output].shape, f"PyTorch gives {ref.shape[1:]}, the IR says {g[g.output].shape}"
    scale = 1 + np.abs(ref).max()
    for fold in (True, False):
        ig, iw = for_inference(g, w, fold=fold)
        model = to_onnx(ig, iw)
        validate(model, ig)
        err = np.abs(ort_run(model, x) - ref).max()
        assert err <= 1e-4 * scale, f"fold={fold}: ONNX Runtime differs from PyTorch by {err:.3g}\n{text}"
