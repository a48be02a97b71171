"""Q/DQ models from the IR (resgraph/quant/qdq.py), on the shipped trained digits ResNet, through the
real onnxruntime: placement read from the emitted graph, integer kernels in ORT's optimised graph,
and held-out top-1 within 0.5 point of fp32 for both encodings."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

import resgraph
from resgraph.backends.onnx.lower import to_onnx
from resgraph.passes.inference import for_inference
from resgraph.quant.qdq import (
    act_params,
    quantize,
    quantize_weight,
    tensors_to_calibrate,
)

SPEC, WEIGHTS = "specs/digits_resnet.yaml", "specs/weights/digits_resnet.safetensors"
KEEP = ("layer1", "fc")


def _session(model, optimized: str | None = None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _minmax(graph, weights, x: np.ndarray, paths: list[str]) -> dict[str, float]:
    """max |tensor| over x for each path: the fp32 model with every path as an extra output."""
    g = graph.replace(outputs=graph.outputs + tuple((f"cal{i}", p) for i, p in enumerate(paths)))
    outs = _session(to_onnx(g, weights)).run(None, {graph.inputs[0][0]: x})
    return {p: float(np.abs(o).max()) for p, o in zip(paths, outs[1:])}


@pytest.fixture(scope="module")
def digits():
    from safetensors.numpy import load_file

    from resgraph.training.data import load_data
    checked = resgraph.check(SPEC)
    graph, weights = for_inference(checked.graph, load_file(WEIGHTS))
    data = load_data("digits", checked.spec)
    xt = data.train.tensors[0].numpy()
    paths = tensors_to_calibrate(graph, ())
    amax = _minmax(graph, weights, xt, paths)
    return graph, weights, amax, data.val.tensors[0].numpy(), data.val.tensors[1].numpy()


def _producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _is_dq(prod, t: str) -> bool:
    return t in prod and prod[t].op_type == "DequantizeLinear"


@pytest.mark.parametrize("encoding", ["s8", "u8"])
@pytest.mark.parametrize("keep", [(), KEEP])
def test_placement_read_from_the_graph(digits, encoding, keep):
    graph, weights, amax, _, _ = digits
    model = quantize(graph, weights, amax, encoding, keep_float=set(keep))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 13
    prod = _producers(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    floating = lambda name: any(name == k or name.startswith(k + ".") for k in keep)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(adds) == 3 and len(convs) == 10
    for n in adds:
        if not floating(n.name):
            assert all(_is_dq(prod, i) for i in n.input), (n.name, list(n.input))
    for n in convs:
        if floating(n.name):   # keep-float: float weights, float input, no DQ anywhere into it
            assert not any(_is_dq(prod, i) for i in n.input), n.name
            assert inits[n.input[1]].dtype == np.float32
            continue
        assert _is_dq(prod, n.input[0]), n.name
        dq = prod[n.input[1]]
        assert dq.op_type == "DequantizeLinear", n.name
        q, scale, zp = (inits[i] for i in dq.input)
        axis = {a.name: a.i for a in dq.attribute}.get("axis", 1)
        assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127, n.name
        assert axis == 0 and scale.shape == (q.shape[0],) and (scale > 0).all(), n.name
        assert zp.dtype == np.int8 and zp.shape == scale.shape and not zp.any(), n.name
        # the int8 weights dequantise to the fp32 ones within half a step per channel
        w = weights[n.input[1]]
        err = np.abs(q * scale.reshape((-1,) + (1,) * (q.ndim - 1)) - w).reshape(len(scale), -1).max(1)
        assert (err <= scale / 2 + 1e-7).all(), n.name
    for out in model.graph.output:
        assert prod[out.name].op_type not in ("QuantizeLinear", "DequantizeLinear"), out.name
    zps = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert zps == {np.dtype(np.uint8 if encoding == "u8" else np.int8)}


def test_u8_runs_on_integer_kernels_in_onnxruntime(digits, tmp_path):
    graph, weights, amax, xv, _ = digits
    model = quantize(graph, weights, amax, "u8")
    opt = str(tmp_path / "opt.onnx")
    _session(model, opt).run(None, {"image": xv[:4]})
    ops = [n.op_type for n in onnx.load(opt).graph.node]
    assert ops.count("QLinearConv") + ops.count("ConvInteger") == 10 - 1   # every conv (fc is a Gemm)
    assert "Conv" not in ops and "FusedConv" not in ops, ops
    assert ops.count("QLinearAdd") == 3, ops


@pytest.mark.parametrize("encoding", ["s8", "u8"])
def test_accuracy_within_half_a_point_of_fp32(digits, encoding):
    graph, weights, amax, xv, yv = digits
    fp32 = (_session(to_onnx(graph, weights)).run(None, {"image": xv})[0].argmax(1) == yv).mean()
    int8 = (_session(quantize(graph, weights, amax, encoding)).run(None, {"image": xv})[0].argmax(1) == yv).mean()
    assert fp32 == pytest.approx(0.983, abs=0.001)   # the shipped model's documented figure
    assert int8 >= fp32 - 0.005, (encoding, fp32, int8)


def test_scales_and_zero_points():
    assert act_params(12.7, "s8", True) == (pytest.approx(0.1), 0)
    assert act_params(12.7, "u8", False) == (pytest.approx(0.1), 128)
    assert act_params(25.5, "u8", True) == (pytest.approx(0.1), 0)
    q, s = quantize_weight(np.array([[1.0, -0.5], [0.0, 0.0]], np.float32))
    assert q.tolist() == [[127, -64], [0, 0]] and s[0] == pytest.approx(1 / 127) and s[1] > 0


def test_u8_spends_its_codes_on_the_range_a_signed_tensor_takes():
    """Given the signed range seen, u8 is asymmetric over [max(min, -amax), min(max, amax)]: the
    calibrated clip on each side, 0 exactly representable; s8 and non-negative tensors ignore it."""
    s, z = act_params(1.8, "u8", False, (-0.8, 1.8))
    assert s == pytest.approx(2.6 / 255) and z == round(0.8 / s)
    assert (0 - z) * s <= -0.8 + s and (255 - z) * s >= 1.8 - s
    s, z = act_params(2.0, "u8", False, (-5.0, 1.0))         # clipped at -amax on the wide side
    assert s == pytest.approx(3.0 / 255) and z == round(2.0 / s)
    assert act_params(2.0, "u8", False, (0.5, 1.0)) == (pytest.approx(1.0 / 255), 0)   # 0 kept in the range
    assert act_params(12.7, "s8", False, (-1.0, 12.7)) == (pytest.approx(0.1), 0)
    assert act_params(25.5, "u8", True, (0.0, 3.0)) == (pytest.approx(0.1), 0)


def test_option_a_zero_pad_shortcut_shares_its_inputs_quantisation():
    """zeropad (option A's Ws) pads with the zero point: it keeps its input's scale and zero point, and
    a relu's output padded is non-negative (u8 zero point 0, not 128 at half the resolution)."""
    from resgraph.quant.qdq import nonnegative, placement
    graph = resgraph.check("specs/cifar_resnet20_a.yaml").graph
    pads = [n for n in graph.nodes if n.op == "zeropad"]
    assert pads
    for e in ("u8", "s8"):
        place = placement(graph, (), e)
        for n in pads:
            assert place[n.path] == place[n.inputs[0]] == n.inputs[0], (e, n.path)
            assert nonnegative(graph, n.path)
