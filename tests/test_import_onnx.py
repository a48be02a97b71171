"""`resgraph import model.onnx`: resgraph's own compiled model.onnx files read back into specs. Their
batch norms are folded into the convs, so the honest import is convs with biases and no bn; the proof
is that the written spec counts the file's own parameters and MACs, and that the spec's module with the
written weights computes what ONNX Runtime computes on the file."""
from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, shape_inference

from resgraph.backends.importer import import_model
from resgraph.backends.importer.onnx_import import onnx_params
from resgraph.backends.importer.onnx_trace import read, trace_onnx
from resgraph.backends.torch import to_torch
from resgraph.cli import cli
from resgraph.compile import compile_spec
from resgraph.errors import WeightsError
from resgraph.frontend import check_file

SPECS = ["digits_resnet", "resnet18", "resnet50", "cifar_resnet20_b", "cifar_plain20", "resnext50_32x4d",
         "residual_mlp"]


def _macs(model) -> int:
    """The file's MACs: each Conv's output elements times its weight's fan-in, each Gemm's weight size."""
    g = shape_inference.infer_shapes(model).graph
    dims = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
            for v in list(g.value_info) + list(g.output)}
    init = {t.name: list(t.dims) for t in g.initializer}
    total = 0
    for n in g.node:
        if n.op_type == "Conv":
            total += int(np.prod(dims[n.output[0]])) * int(np.prod(init[n.input[1]][1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            total += int(np.prod(init[n.input[1]]))
    return total


@pytest.mark.parametrize("name", SPECS)
def test_a_compiled_spec_imports_back_with_the_files_counts_and_outputs(name, tmp_path):
    onnx_path = compile_spec(f"specs/{name}.yaml", out=str(tmp_path / "c")).files["model.onnx"]
    spec, weights = tmp_path / "m.yaml", tmp_path / "m.safetensors"
    r = CliRunner().invoke(cli, ["import", onnx_path, "-o", str(spec), "--weights-out", str(weights)])
    assert r.exit_code == 0, r.output
    model = onnx.load(onnx_path)
    _, _, tensors, shape = trace_onnx(model, onnx_path)
    c = check_file(str(spec))
    assert c.params == onnx_params(tensors)
    assert c.params == sum(int(np.prod(t.dims)) for t in model.graph.initializer)   # all of it is learned
    assert c.macs == _macs(model)
    assert "bn" not in {n.op for n in c.graph.nodes}   # folded: convs with biases
    ours = to_torch(c.graph, weights=str(weights)).eval()
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        a = ours(torch.from_numpy(x))
    a = a[0] if isinstance(a, (tuple, list)) else a
    assert np.abs(a.numpy() - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_resnet50_from_onnx_keeps_its_structure(tmp_path):
    onnx_path = compile_spec("specs/resnet50.yaml", out=str(tmp_path / "c")).files["model.onnx"]
    imported = import_model(onnx_path)
    lines = imported.text.splitlines()
    assert len(lines) <= 45, imported.text
    assert sum("repeat:" in line for line in lines) == 4
    assert "  - bottleneck: {id: layer2, width: 128, repeat: 4, first: {stride: 2}}" in lines, imported.text
    paths = {n.path for n in imported.checked.graph.nodes}
    assert {"layer3.4.conv2", "layer1.0.shortcut", "fc"} <= paths


def test_missing_external_data_is_named_and_nothing_is_written(tmp_path):
    out = compile_spec("specs/digits_resnet.yaml", out=str(tmp_path / "c"), external_data=True).out
    data = [f for f in os.listdir(out) if f.endswith(".data")]
    assert data == ["model.onnx.data"]
    assert read(os.path.join(out, "model.onnx")).graph.initializer[0].raw_data   # present: loaded
    shutil.move(os.path.join(out, data[0]), tmp_path / "elsewhere.data")
    spec = tmp_path / "m.yaml"
    r = CliRunner().invoke(cli, ["import", os.path.join(out, "model.onnx"), "-o", str(spec)])
    assert r.exit_code == 1 and "external data file 'model.onnx.data'" in r.output and "missing" in r.output
    assert not spec.exists()


def test_every_unsupported_onnx_node_is_listed_and_nothing_is_written(tmp_path):
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4, 3, 3, 3], np.zeros(108, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Erf", ["c"], ["e"], name="odd.erf"),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("LRN", ["r"], ["y"], name="norm", size=3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    path, spec = tmp_path / "odd.onnx", tmp_path / "odd.yaml"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(WeightsError) as e:
        import_model(str(path))
    assert [d.message for d in e.value.diagnostics] == ["unsupported node 'odd.erf': op Erf",
                                                        "unsupported node 'norm': op LRN"]
    r = CliRunner().invoke(cli, ["import", str(path), "-o", str(spec)])
    assert r.exit_code == 1 and "op Erf" in r.output and "op LRN" in r.output and not spec.exists()
