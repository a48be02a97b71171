"""`resgraph import model.onnx`: resgraph's own compiled model.onnx files read back into specs.

Folded (the default compile): batch norms are inside the convs, so the honest import is convs with
biases and no bn; the proof is that the written spec counts the file's own parameters and MACs, and
that the spec's module with the written weights computes what ONNX Runtime computes on the file.
With bn kept (`compile --no-fold`), every shipped spec must come back as the same graph: the same
nodes, ops, shapes, edges, inserted Ws and args after expansion, the same paths, the same counts.
Foreign files: torch.onnx.export's resnet18, and a hand-built graph with another exporter's spellings.
"""
from __future__ import annotations

import functools
import glob
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, numpy_helper, shape_inference

from resgraph.backends.importer import import_model, write
from resgraph.backends.importer.onnx_import import onnx_params
from resgraph.backends.importer.onnx_trace import read, trace_onnx
from resgraph.backends.torch import to_torch
from resgraph.cli import cli
from resgraph.compile import compile_spec
from resgraph.errors import WeightsError
from resgraph.frontend import check_at, check_file
from resgraph.ops import pads, transpose_pads
from resgraph.passes.inference import for_inference

# the folded files (convs with biases); every spec's unfolded file is compared node by node below
SPECS = ["digits_resnet", "resnet18", "cifar_resnet20_b", "residual_mlp"]


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
    assert "input: {name: image, shape: [3, 224, 224]}" in lines and "output: {name: logits}" in lines   # the file's
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


# --- every shipped spec, bn kept: export, import back, the same graph ---------------------------------

ALL = sorted(os.path.basename(p)[:-5] for p in glob.glob("specs/*.yaml"))
OUTPUTS = ("digits_resnet", "residual_mlp", "cifar_resnet20_a", "cifar_resnet20_b", "cifar_plain20")   # small
SIZE = (64, 64)   # specs with size variables are compiled and compared at this H x W
# args an ONNX file does not carry: bn's momentum and a scale's init act in training only; an add's
# `from`, `shortcut` and `project_from` are its inputs and its inserted Ws, which are compared as nodes
_UNCARRIED = {"bn": ("momentum",), "scale": ("init",), "add": ("from", "shortcut", "project_from"),
              "mul": ("from",), "concat": ("from",)}
_NAMES = ("the graph imports exactly but names change: ops of a block without a residual come back as top-level ops "
          "named by kind and count, and a block nested in another loses its scope (e.g. 'layer1.0.conv1' -> 'conv2' in "
          "cifar_plain20, 'layer1.0.se.fc1' -> 'layer1.0.conv4' in se_resnet50)")
BROKEN = {}   # both checks fail: nothing imports
RENAMED = {**BROKEN, **{n: _NAMES for n in ("cifar_plain20", "cifar_plain56", "convnext_tiny", "densenet121",
                                            "efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "se_resnet50",
                                            "unet")}}


def _args(n) -> dict:
    """The node's args that an ONNX file carries, a padding as the pixels it pads (a 1x1 conv's 'same'
    and 'valid' are both none; a transposed conv's as the (crop, extra) pair of transpose_pads)."""
    args = {k: v for k, v in n.args.items() if k not in _UNCARRIED.get(n.op, ())}
    if n.op == "conv_transpose":   # 'same' and the integer padding that crops as much are one op
        a = args
        a["padding"] = transpose_pads(a["padding"], a["kernel"], a["stride"], a["dilation"], a.pop("output_padding"))
    elif "padding" in args:
        args["padding"] = pads(args["padding"], args["kernel"], args.get("dilation", 1))
    return args


def _expanded(graph, named: bool = True) -> list[tuple]:
    """Every node as (path, op, shape, inputs, inserted, args); without names, each path is the node's
    index (the structure alone)."""
    index = {n.path: i for i, n in enumerate(graph.nodes)}
    name = (lambda p: p) if named else index.__getitem__
    return [(name(n.path), n.op, n.shape, tuple(map(name, n.inputs)), n.inserted, _args(n)) for n in graph.nodes]


def _original(name: str):
    """The shipped spec checked (at SIZE where it has size variables)."""
    c = check_file(f"specs/{name}.yaml")
    return check_at(c, SIZE) if c.sizes is not None else c


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"node {i}: spec {x}\n      import {y}"
    return f"{len(a)} nodes in the spec, {len(b)} imported"


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """name -> (the shipped spec checked, its model.onnx compiled with bn kept, that file imported back),
    each made once for both tests below."""
    @functools.cache
    def make(name: str):
        original = _original(name)
        out = str(tmp_path_factory.mktemp(name) / "c")
        onnx_path = compile_spec(f"specs/{name}.yaml", out=out, fold=False).files["model.onnx"]
        try:   # import_model checks the spec's module against ONNX Runtime
            return original, onnx_path, import_model(onnx_path, input_shape=original.graph.nodes[0].shape)
        except WeightsError as e:
            return e

    def get(name: str):
        got = make(name)
        if isinstance(got, WeightsError):   # made once, raised in each test
            raise got
        return got
    return get


def _cases(xfail: dict) -> list:
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=xfail[n])) if n in xfail else n for n in ALL]


@pytest.mark.parametrize("name", _cases(BROKEN))
def test_every_shipped_spec_exported_with_bn_kept_imports_back_with_its_structure(name, round_trip, tmp_path):
    """The ONNX file holds the inference graph: dropout and drop_path are gone, an explicit `project` is
    its conv and bn (passes.inference's drop_noops and expand_projections, without the bn fold). The
    import has the same nodes, ops, shapes, edges, inserted Ws and args, and the same counts."""
    original, onnx_path, imported = round_trip(name)
    expected, _ = for_inference(original.graph, {}, fold=False)
    ours, theirs = _expanded(expected, named=False), _expanded(imported.checked.graph, named=False)
    assert ours == theirs, _first_difference(ours, theirs)
    assert (imported.checked.params, imported.checked.macs) == (original.params, original.macs)
    if name in OUTPUTS:   # the written files, read back, against ONNX Runtime on another input
        spec, weights = tmp_path / "m.yaml", tmp_path / "m.safetensors"
        write(imported, str(spec), str(weights))
        module = to_torch(check_file(str(spec)).graph, weights=str(weights)).eval()
        x = np.random.default_rng(2).standard_normal((3, *original.graph.nodes[0].shape)).astype(np.float32)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            a = module(torch.from_numpy(x)).numpy()
        assert np.abs(a - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


@pytest.mark.parametrize("name", _cases(RENAMED))
def test_every_shipped_spec_exported_with_bn_kept_imports_back_with_its_paths(name, round_trip):
    """... and every node keeps its path (`layer2.0.shortcut.conv`): the same graph after expansion."""
    original, _, imported = round_trip(name)
    expected, _ = for_inference(original.graph, {}, fold=False)
    ours, theirs = _expanded(expected), _expanded(imported.checked.graph)
    assert ours == theirs, _first_difference(ours, theirs)


def test_a_torchvision_resnet18_exported_by_torch_imports_with_its_module_paths(tmp_path):
    """torch.onnx.export (the TorchScript exporter) folds bn into the convs, names nodes by scope
    (`/layer1/layer1.0/conv1/Conv`), shares equal tensors through Identity nodes and fixes the batch
    at 1: the import reads the scopes as paths, the Identities as the tensors, and runs at batch 1."""
    import torchvision
    model = torchvision.models.resnet18().eval()
    path = str(tmp_path / "tv18.onnx")
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), path, dynamo=False, input_names=["x"])
    imported = import_model(path)
    assert imported.report["max_abs_diff"] <= 1e-4
    c = imported.checked
    bns = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert c.params == sum(p.numel() for p in model.parameters()) - bns   # each bn's gamma, beta: one conv bias
    assert c.macs == _macs(onnx.load(path))
    assert {"conv1", "layer3.1.conv2", "layer2.0.shortcut", "fc"} <= {n.path for n in c.graph.nodes}
    assert "  - basic: {id: layer2, out: 128, repeat: 2, first: {stride: 2}}" in imported.text.splitlines()


MINI = """resgraph: 1
name: mini
input: {shape: [3, 16, 16]}
layers:
  - conv: {id: stem, out: 8, kernel: 3}
  - groupnorm: {id: gn, groups: 2, eps: 1.0e-4}
  - relu6: {id: act1}
  - upsample: {id: up, scale: 2}
  - conv: {id: mid, out: 8, kernel: 3, stride: 2}
  - gelu: {id: act2}
  - upsample: {id: up2, scale: 2, mode: bilinear}
  - conv_transpose: {id: deconv, out: 4, kernel: 3, stride: 2, padding: 1, output_padding: 1}
  - hardsigmoid: {id: act3}
  - leaky_relu: {id: act4, slope: 0.2}
  - softmax: {id: probs}
  - global_avgpool: {id: pool}
  - flatten: {id: flat}
  - linear: {id: fc, out: 6}
  - layernorm: {id: ln, eps: 1.0e-3}
  - silu: {id: act5}
  - softmax: {id: out}
"""


@pytest.mark.parametrize("opset", [17, 21])   # 17: gelu as erf, groupnorm as InstanceNormalization; 21: one node each
def test_every_op_lowering_reads_back_as_its_op(opset, tmp_path):
    """The ops no shipped spec uses (or only one whose import fails for other reasons) in one chain."""
    spec = tmp_path / "mini.yaml"
    spec.write_text(MINI)
    original = check_file(str(spec))
    onnx_path = compile_spec(str(spec), out=str(tmp_path / "c"), fold=False, opset=opset).files["model.onnx"]
    imported = import_model(onnx_path)
    assert imported.report["max_abs_diff"] <= 1e-4
    ours, theirs = _expanded(original.graph), _expanded(imported.checked.graph)
    assert ours == theirs, _first_difference(ours, theirs)
    assert (imported.checked.params, imported.checked.macs) == (original.params, original.macs)


def test_a_foreign_onnx_graph_with_reduce_mean_and_unnamed_nodes_imports(tmp_path):
    """Another exporter's spellings: ReduceMean over H, W (keepdims) is global_avgpool, MatMul + Add one
    linear; node names that are no module path become the op and a count."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 3, 3, 3)), ("fc_w", (4, 5)), ("fc_b", (5,)))]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="model/conv:0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name=""),
             helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="model/mean:0", keepdims=1),
             helper.make_node("Flatten", ["m"], ["f"], name="model/flatten:0"),
             helper.make_node("MatMul", ["f", "fc_w"], ["mm"], name="model/fc:0"),
             helper.make_node("Add", ["mm", "fc_b"], ["y"], name="model/fc_bias:0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    imported = import_model(str(path))
    assert imported.report["max_abs_diff"] <= 1e-4
    assert [(n.path, n.op) for n in imported.checked.graph.nodes] == [
        ("input", "input"), ("conv1", "conv"), ("relu1", "relu"), ("reducemean1", "global_avgpool"),
        ("flatten1", "flatten"), ("matmul1", "linear")]
    assert imported.checked.params == 4 * 27 + 4 * 5 + 5
