"""The ONNX back end: inference passes (numerically), validity on every spec, and parity with PyTorch."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

import resgraph  # noqa: E402
from resgraph.backends.onnx import LOWER, OPSETS, to_onnx, validate  # noqa: E402
from resgraph.frontend import check_text  # noqa: E402
from resgraph.ops import OPS  # noqa: E402
from resgraph.passes.inference import drop_noops, expand_projections, fold_batchnorm, for_inference  # noqa: E402
from resgraph.passes.verify import verify  # noqa: E402
from conftest import ROOT, SPECS, check_small  # noqa: E402


def test_every_op_has_an_onnx_lowering():
    assert set(LOWER) == set(OPS)


def test_all_ops_uses_every_op(allops):
    """ALL_OPS is the one test a new op needs: it must be in it (zeropad comes from shortcut: zeropad)."""
    assert {n.op for n in allops.graph.nodes[1:]} == set(OPS)


def random_weights(graph, seed=0):
    """A seeded init with non-trivial bn: random affine, and running statistics measured on random
    data then perturbed (fresh 0/1 statistics hide folding mistakes; uncalibrated random ones make
    a 110-layer net's outputs explode to 1e9, where no absolute tolerance means anything)."""
    m = resgraph.to_torch(graph, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    bns = [mod for mod in m.modules() if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    with torch.no_grad():
        for mod in bns:
            c = mod.num_features
            mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            mod.bias.copy_(torch.randn(c, generator=g) * 0.2)
            mod.reset_running_stats()
            mod.momentum = None          # cumulative: the statistics of exactly the calibration batch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)      # dropout in train mode draws from the global generator
            m.train()(torch.randn(4, *graph.nodes[0].shape, generator=g))
        for mod in bns:
            c = mod.num_features
            # perturbed so eval differs from the calibration batch, mildly: factors compound over depth
            mod.running_mean.add_(torch.randn(c, generator=g) * 0.05 * mod.running_var.sqrt())
            mod.running_var.mul_(torch.exp(torch.randn(c, generator=g) * 0.1))
    return {k: v.numpy().copy() for k, v in m.state_dict().items()}


def flat(outs) -> np.ndarray:
    """One output as it is; several (a backbone's) as one [N, ...] array of every output flattened,
    in spec order: every comparison below then covers each of them."""
    outs = [np.asarray(o) for o in (outs if isinstance(outs, (tuple, list)) else [outs])]
    return outs[0] if len(outs) == 1 else np.concatenate([o.reshape(len(o), -1) for o in outs], axis=1)


def torch_eval(graph, weights, x):
    m = resgraph.to_torch(graph, init=False)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    with torch.no_grad():
        y = m.eval()(torch.from_numpy(x))
    return flat([t.numpy() for t in y] if isinstance(y, tuple) else y.numpy())


def ort_run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return flat(s.run(None, {s.get_inputs()[0].name: x}))


ALL_OPS = """resgraph: 1
name: allops
input: {name: x, shape: [4, 10, 10]}
shortcut: avgpool_projection
layers:
  - conv: {out: 8, kernel: 2, id: c0}
  - bn
  - relu6
  - maxpool: {kernel: 2, stride: 1, padding: same}
  - avgpool: {kernel: [1, 2], stride: 1, padding: same}
  - avgpool: {kernel: 4, stride: 2, padding: same}
  - gelu: {id: a}
  - residual:
      id: r
      layers:
        - conv: {out: 12, kernel: 3, stride: 2, groups: 4, bias: false}
        - bn
        - silu
        - dropout: {p: 0.3}
      post: leaky_relu
  - upsample: {scale: 2, mode: bilinear}
  - sigmoid
  - upsample: {scale: 2, mode: nearest, id: up}
  - conv: {out: 4, kernel: 3, dilation: 2, stride: 2, padding: 1, in: up}
  - conv: {out: 4, kernel: [2, 3], dilation: [1, 2]}
  - concat: {from: [a]}
  - tanh
  - relu
  - conv_transpose: {out: 6, kernel: 3, stride: 2, groups: 2}
  - identity
  - layernorm: {id: ln, eps: 0.001}
  - groupnorm: {groups: 3}
  - prelu: {init: 0.1}
  - hardswish
  - mish
  - split: {id: parts, sizes: [2, 4]}
  - concat: {in: parts.1, from: [parts.0]}
  - chunk: {id: h, chunks: 3}
  - concat: {in: h.2, from: [h.0, h.1]}
  - residual:
      id: se
      layers:
        - global_avgpool
        - conv: {out: 2, kernel: 1}
        - relu
        - conv: {out: 6, kernel: 1}
        - hardsigmoid
        - mul: {from: [input]}
        - scale: {init: 0.5}
        - drop_path: {p: 0.2}
  - project: {out: 6, stride: 2}
  - residual:
      id: z
      shortcut: zeropad
      layers:
        - conv: {out: 10, kernel: 3, stride: 2}
  - global_avgpool
  - flatten
  - bn
  - linear: {out: 16, bias: false}
  - bn
  - layernorm
  - groupnorm: {groups: 4, eps: 0.01}
  - chunk: {id: q, chunks: 2}
  - concat: {in: q.1, from: [q.0]}
  - scale: {init: 2.0}
  - residual:
      id: v
      layers:
        - linear: {out: 24}
      shortcut: projection
  - project: {out: 5}
  - softmax
"""


@pytest.fixture(scope="module")
def allops():
    return check_text(ALL_OPS)


def test_fold_batchnorm_is_exact_with_random_statistics(allops):
    g = allops.graph
    w = random_weights(g)
    g2, w2 = fold_batchnorm(g, w)
    verify(g2)
    assert sum(n.op == "bn" for n in g.nodes) - sum(n.op == "bn" for n in g2.nodes) == 4   # conv/bn, Ws conv/bn, linear/bn
    assert g2["c0"].args["bias"] is True and "bn1.weight" not in w2 and "c0.bias" in w2
    assert "r.shortcut.bn" not in g2 and [p.nodes for p in g2.projections if p.at == "r"] == [("r.shortcut.pool", "r.shortcut.conv")]
    x = np.random.default_rng(0).standard_normal((5, 4, 10, 10)).astype(np.float32)
    assert np.abs(torch_eval(g, w, x) - torch_eval(g2, w2, x)).max() <= 1e-5
    # a bn after a flatten (not a conv/linear) stays; so does the input graph
    assert g2["bn2"].op == "bn" and "bn1" in g


def test_fold_leaves_shared_layers_alone():
    g = check_text("resgraph: 1\nname: s\ninput: {shape: [3, 4, 4]}\nlayers:\n  - conv: {id: c, out: 3, kernel: 1}\n"
                   "  - bn\n  - add: {from: [c]}\n").graph
    g2, _ = fold_batchnorm(g, random_weights(g))
    assert g2 is not g and "bn1" in g2   # conv c feeds the add too: folding would change it


def test_drop_noops(allops):
    g = allops.graph
    w = random_weights(g)
    g2, w2 = drop_noops(g, w)
    verify(g2)
    assert not any(n.op in ("dropout", "identity") for n in g2.nodes)
    x = np.random.default_rng(1).standard_normal((3, 4, 10, 10)).astype(np.float32)
    assert np.abs(torch_eval(g, w, x) - torch_eval(g2, w2, x)).max() <= 1e-6


def test_explicit_projections_are_spelled_out_then_folded():
    """project on maps = bn(conv1x1), its bn following the spec's defaults: {bn: ...} (eps 0.01 here:
    with ONNX's 1e-5 instead the outputs would differ by ~1e-2)."""
    g = check_text(ALL_OPS.replace("layers:\n", "defaults: {bn: {eps: 0.01}}\nlayers:\n", 1)).graph
    w = random_weights(g)
    p = next(n.path for n in g.nodes if n.op == "project" and len(n.shape) == 3)
    g2, w2 = expand_projections(g, w)
    verify(g2)
    assert p not in g2 and g2[f"{p}.conv"].args["kernel"] == 1 and g2[f"{p}.bn"].args["eps"] == 0.01
    assert [n.op for n in g2.nodes if n.op == "project"] == ["project"] and w2 == w   # the vector one stays
    x = np.random.default_rng(3).standard_normal((3, 4, 10, 10)).astype(np.float32)
    ref = torch_eval(g, w, x)
    assert np.abs(torch_eval(g2, w2, x) - ref).max() <= 1e-6
    g3, w3 = for_inference(g, w)
    assert f"{p}.bn" not in g3 and f"{p}.conv.bias" in w3 and f"{p}.bn.weight" not in w3
    for model in (to_onnx(g, w), to_onnx(*for_inference(g, w, fold=False)), to_onnx(g3, w3)):
        assert np.abs(ort_run(model, x) - ref).max() <= 1e-4


def test_the_bn_arguments_of_a_projection_sit_on_its_node():
    """A `project` carries its bn's eps and momentum: from defaults: {bn: ...}, or its own; an inserted
    Ws bn gets the defaults as arguments; the graph holds them in a typed record, not the spec."""
    text = ALL_OPS.replace("layers:\n", "defaults: {bn: {eps: 0.01, momentum: 0.3}}\nlayers:\n", 1)
    g = check_text(text).graph
    assert dict(g.settings.bn) == {"eps": 0.01, "momentum": 0.3} and g.settings.shortcut == "avgpool_projection"
    assert not hasattr(g, "meta")
    projects = [n for n in g.nodes if n.op == "project"]
    assert [(n.args["eps"], n.args["momentum"]) for n in projects] == [(0.01, 0.3)] * 2
    assert g["r.shortcut.bn"].args["eps"] == 0.01 and g["r.shortcut.bn"].args["momentum"] == 0.3
    own = check_text(text.replace("project: {out: 6, stride: 2}", "project: {out: 6, stride: 2, eps: 0.001}")).graph
    p = next(n for n in own.nodes if n.op == "project")
    assert (p.args["eps"], p.args["momentum"]) == (0.001, 0.3)
    assert check_text(ALL_OPS).graph[p.path].args["eps"] == 1e-5   # no defaults: PyTorch's


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("h,w,k,s,padding", [(6, 7, 1, 2, "same"), (6, 6, 2, 2, "same"), (6, 9, 3, 2, "same"),
                                             (2, 2, 1, 2, "valid"), (6, 5, 1, 2, "valid"), (5, 8, 2, 2, 1),
                                             (7, 6, 3, 2, 1), (4, 7, 2, 3, 1)])
def test_pool_ceil_mode_corners(op, h, w, k, s, padding):
    """ceil_mode where PyTorch drops a last window that would start in the end padding (ONNX's shape
    inference does not), on one axis and not the other; and 'same', whose size ceil_mode cannot change."""
    spec = f"resgraph: 1\nname: p\ninput: {{shape: [2, {h}, {w}]}}\nlayers:\n" \
           f"  - {op}: {{kernel: {k}, stride: {s}, padding: {padding}, ceil_mode: true}}\n"
    g = check_text(spec).graph
    model = to_onnx(g, {})
    validate(model, g)   # ONNX's own shape inference agrees with the IR
    x = np.random.default_rng(0).standard_normal((1, 2, h, w)).astype(np.float32)
    ref = torch_eval(g, {}, x)
    assert ref.shape[1:] == g[g.output].shape and np.abs(ort_run(model, x) - ref).max() <= 1e-6


@pytest.mark.parametrize("opset", list(OPSETS))
def test_all_ops_parity_at_every_opset(allops, opset):
    w = random_weights(allops.graph)
    g, iw = for_inference(allops.graph, w)
    model = to_onnx(g, iw, opset=opset)
    validate(model, g)
    x = np.random.default_rng(opset).standard_normal((7, 4, 10, 10)).astype(np.float32)
    assert np.abs(ort_run(model, x) - torch_eval(allops.graph, w, x)).max() <= 1e-4


def fp32_noise(graph, weights, x):
    """How far PyTorch's own fp32 result is from its fp64 result: the rounding noise floor."""
    m = resgraph.to_torch(graph, init=False).double()
    m.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    with torch.no_grad():
        y = m.eval()(torch.from_numpy(x).double())
    r64 = flat([t.numpy() for t in y] if isinstance(y, tuple) else y.numpy())
    return np.abs(torch_eval(graph, weights, x) - r64).max()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_parity_on_every_shipped_spec(path):
    """The compiler's proof: ONNX Runtime equals the PyTorch module (fp32, abs <= 1e-4, normalised input).

    Where that is tighter than fp32 arithmetic itself allows, the bound is 4x the measured noise
    floor (PyTorch fp32 vs PyTorch fp64 on the same input): a randomly initialised deep plain
    network (cifar_plain56) is so ill-conditioned that PyTorch's own fp32 result is ~1e-3 from the
    exact one, and the 100+-layer ImageNet nets reach ~1.5e-4 on logits of ~10. The CIFAR ResNets
    and every other spec stay far below 1e-4.
    """
    checked = check_small(path)   # a spec with size variables at a small valid size
    w = random_weights(checked.graph)
    g, iw = for_inference(checked.graph, w)
    model = to_onnx(g, iw)
    validate(model, g)
    unfolded = to_onnx(*for_inference(checked.graph, w, fold=False))
    validate(unfolded, for_inference(checked.graph, w, fold=False)[0])
    rng = np.random.default_rng(0)
    # a batch of several shows that samples stay apart (seven images); the three nets of 7.8-11.5 GMACs
    # run one image, folded and not: they add repeats of blocks resnet50 has, whose batch of 7 shows it
    for batch in (1, 7) if checked.macs < 5e9 else (1,):
        x = rng.standard_normal((batch, *checked.graph.nodes[0].shape)).astype(np.float32)
        ref = torch_eval(checked.graph, w, x)
        errs = [np.abs(ort_run(model, x) - ref).max()] + ([np.abs(ort_run(unfolded, x) - ref).max()] if batch == 1 else [])
        if max(errs) > 1e-4:
            noise = fp32_noise(checked.graph, w, x)   # an fp64 forward: only where it is needed
            assert max(errs) <= 4 * noise, f"ONNX Runtime differs by {max(errs):.2e}; fp32 noise floor {noise:.2e}"


def test_model_conventions():
    checked = resgraph.check(str(ROOT / "specs" / "resnet18.yaml"))
    g, w = for_inference(checked.graph, random_weights(checked.graph))
    meta = {"resgraph.spec": "resnet18"}
    model = to_onnx(g, w, metadata=meta)
    assert model.opset_import[0].version == 17 and model.producer_name == "resgraph"
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    inits = {t.name for t in model.graph.initializer}
    assert {"conv1.weight", "conv1.bias", "layer2.0.shortcut.conv.weight", "fc.weight"} <= inits
    assert {n.name for n in model.graph.node} >= {"layer2.0.conv1", "layer2.0", "layer2.0.post"}
    assert {p.key: p.value for p in model.metadata_props} == meta


@pytest.mark.parametrize("name", ["cifar_resnet20_b", "resnet18", "densenet121"])
def test_fp16_parity(name):
    """fp16 weights and compute, fp32 in and out; documented tolerance: 2e-2 x (1 + |reference|)."""
    checked = resgraph.check(str(ROOT / "specs" / f"{name}.yaml"))
    w = random_weights(checked.graph)
    g, iw = for_inference(checked.graph, w)
    model = to_onnx(g, iw, precision="fp16")
    validate(model, g)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer if t.name.endswith("weight"))
    x = np.random.default_rng(0).standard_normal((2, *checked.graph.nodes[0].shape)).astype(np.float32)
    ref = torch_eval(checked.graph, w, x)
    out = ort_run(model, x)
    assert out.dtype == np.float32 and np.all(np.abs(out - ref) <= 2e-2 * (1 + np.abs(ref)))


def test_parity_with_trained_digits_model():
    from sklearn.datasets import load_digits
    from safetensors.numpy import load_file
    checked = resgraph.check(str(ROOT / "specs" / "digits_resnet.yaml"))
    w = load_file(str(ROOT / "specs" / "weights" / "digits_resnet.safetensors"))
    model = to_onnx(*for_inference(checked.graph, w))
    d = load_digits()
    x = ((d.images[:200] / 16.0 - 0.3) / 0.38).astype(np.float32)[:, None]
    out, ref = ort_run(model, x), torch_eval(checked.graph, w, x)
    assert np.abs(out - ref).max() <= 1e-4
    assert (out.argmax(1) == ref.argmax(1)).all() and (out.argmax(1) == d.target[:200]).mean() > 0.97


def test_parity_with_torchvision_weights():
    pytest.importorskip("torchvision", reason="torchvision is not installed")
    from resgraph.backends.torch.importer import import_torchvision
    from resgraph.backends.torch.torchvision import torchvision_model
    tv = torchvision_model("resnet18", seed=5).eval()
    module, _ = import_torchvision("resnet18", str(ROOT / "specs" / "resnet18.yaml"), seed=5)
    checked = resgraph.check(str(ROOT / "specs" / "resnet18.yaml"))
    w = {k: v.numpy() for k, v in module.state_dict().items()}
    model = to_onnx(*for_inference(checked.graph, w))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = tv(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(model, x) - ref).max() <= 1e-4


def test_metadata_round_trip(tmp_path):
    from resgraph.compile import compile_spec
    c = compile_spec(str(ROOT / "specs" / "cifar_resnet20_a.yaml"), out=str(tmp_path / "c"))
    model = onnx.load(c.files["model.onnx"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["resgraph.spec"] == "cifar_resnet20_a" and len(meta["resgraph.spec_sha256"]) == 64
    assert json.loads(meta["resgraph.projections"])[0]["kind"] == "zeropad"
    assert json.loads(meta["resgraph.labels"])[0] == "airplane"
    assert json.loads(meta["resgraph.preprocess"])["mean"] == [0.4914, 0.4822, 0.4465]
    assert meta["resgraph.trained"] == "false"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_streamed_file_equals_the_model(allops, tmp_path, precision):
    """The streaming writer's file parses to exactly the ModelProto to_onnx builds."""
    import hashlib
    from resgraph.backends.onnx.lower import build
    from resgraph.backends.onnx.writer import write_model
    g, w = for_inference(allops.graph, random_weights(allops.graph))
    meta = {"resgraph.spec": "allops"}
    small, big = build(g, w, precision=precision, metadata=meta)
    assert big and all(a.size > 64 for a in big.values())
    path = tmp_path / "m.onnx"
    digest, n = write_model(str(path), small, big)
    data = path.read_bytes()
    assert digest == hashlib.sha256(data).hexdigest() and n == len(data)
    assert onnx.load(str(path)) == to_onnx(g, w, precision=precision, metadata=meta)
    x = np.random.default_rng(0).standard_normal((2, 4, 10, 10)).astype(np.float32)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(s.run(None, {"x": x})[0] - ort_run(to_onnx(g, w, precision=precision), x)).max() == 0


def test_an_op_without_a_lowering_fails_at_import_naming_it():
    """A new op in the table without its lowering: each back end refuses to import, naming the op and
    where to add it (not a KeyError the first time a spec uses the op)."""
    import subprocess
    import sys
    code = ("from resgraph.ops import OPS\nimport resgraph.ops.table as table\n"
            "OPS['wavelet'] = next(iter(OPS.values()))\ntable.BUILTIN = table.BUILTIN | {'wavelet'}   # a row of the table\n"
            "import importlib\n"
            "for m in ('resgraph.backends.onnx.lower', 'resgraph.backends.torch.lower'):\n"
            "    try:\n        importlib.import_module(m)\n    except ImportError as e:\n        print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stdout.splitlines() if line.startswith("refused:")]
    assert len(lines) == 2, r.stdout + r.stderr
    assert "ONNX back end has no lowering for op(s) wavelet: add them to LOWER in resgraph.backends.onnx.lower" in lines[0]
    assert "PyTorch back end has no lowering for op(s) wavelet" in lines[1]


def test_one_padding_rule_for_every_back_end():
    """'same' = d*(k-1) in total, the odd one at the end; both back ends read it from the op table, and
    with it ceil(n / s) comes out for every stride (the shape rule's promise)."""
    from resgraph.ops import pads, spatial
    assert pads("same", 3) == (1, 1) and pads("same", 4) == (1, 2) and pads("same", 3, 2) == (2, 2)
    assert pads("valid", 7) == (0, 0) and pads(2, 5) == (2, 2)
    import importlib   # (the torch package's `lower` is also a function: import the modules by name)
    from resgraph.ops.shapes import pads_hw
    assert all(importlib.import_module(f"resgraph.backends.{m}.lower").pads_hw is pads_hw for m in ("onnx", "torch"))
    assert pads_hw("same", (1, 7)) == ((0, 0), (3, 3)) and pads_hw((0, 2), 4, 2) == ((0, 0), (2, 2))
    for n in range(1, 20):
        for k in range(1, 8):
            for s in (1, 2, 3):
                for d in (1, 2):
                    b, e = pads("same", k, d)
                    assert (n + b + e - d * (k - 1) - 1) // s + 1 == spatial(n, k, s, d, "same")[0], (n, k, s, d)
