"""The facts each op table row states (OpDef's keyword-only fields): required on every row, valid, and
true of what the code does; and the list of files that adding an op changes (docs/architecture.md),
checked by adding a throwaway op to exactly those files of a copy of the package."""
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from conftest import ROOT
from test_onnx_backend import ALL_OPS, random_weights, torch_eval

import resgraph
from resgraph.backends.torch.init import init_weights, zero_residual_layers
from resgraph.backends.torch.matching import _LAYERS, entry
from resgraph.errors import ResgraphError
from resgraph.frontend import check_text
from resgraph.ir import Graph, Node, freeze
from resgraph.ops import OPS, OpDef
from resgraph.ops.table import FACTS, INFERENCE, INIT_POLICIES, check_facts
from resgraph.passes.inference import drop_noops, fold_batchnorm

FIELDS = ("keeps_zero", "zeroable", "inference", "bn_folds_into", "init", "import_kind", "aliases")


# --- 1. every fact is required ----------------------------------------------------------------

def _kwargs(op: OpDef) -> dict:
    return {f.name: getattr(op, f.name) for f in dataclasses.fields(OpDef)}


def test_the_facts_are_the_keyword_only_fields_without_defaults():
    assert FACTS == FIELDS
    facts = [f for f in dataclasses.fields(OpDef) if f.kw_only]
    assert [f.name for f in facts] == list(FIELDS)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in facts)


@pytest.mark.parametrize("field", FIELDS)
def test_a_row_without_any_one_fact_is_refused(field):
    """A new op that leaves out a fact fails where the table is built, naming the fact."""
    for row in (OPS["conv"], OPS["relu"], OPS["project"]):
        kw = _kwargs(row)
        OpDef(**kw)   # complete: fine
        del kw[field]
        with pytest.raises(TypeError, match=field):
            OpDef(**kw)


@pytest.mark.parametrize("field,bad", [
    ("keeps_zero", "yes"), ("keeps_zero", None), ("zeroable", 1), ("inference", "skip"), ("inference", None),
    ("bn_folds_into", "conv"), ("init", "kaiming"), ("init", ""), ("import_kind", 3), ("aliases", ["conv2d"]),
    ("aliases", ("Conv2d",)), ("aliases", ("conv",)), ("aliases", ("c2d", "c2d")), ("aliases", "conv2d"),
])
def test_a_bad_fact_is_refused(field, bad):
    with pytest.raises(AssertionError):
        OpDef(**{**_kwargs(OPS["conv"]), field: bad})


def test_facts_that_contradict_each_other_are_refused():
    relu, bn = _kwargs(OPS["relu"]), _kwargs(OPS["bn"])
    with pytest.raises(AssertionError):
        OpDef(**{**relu, "zeroable": True})                 # nothing to zero
    with pytest.raises(AssertionError):
        OpDef(**{**relu, "bn_folds_into": True})            # nothing to fold into
    with pytest.raises(AssertionError):
        OpDef(**{**bn, "inference": "noop"})                # a noop with weights
    with pytest.raises(AssertionError):
        OpDef(**{**_kwargs(OPS["add"]), "inference": "noop"})   # a noop with several inputs


def test_aliases_may_not_collide_with_an_op_or_another_alias():
    check_facts(OPS)
    relu = OPS["relu"]
    for aliases in (("bn2d",), ("gelu",)):   # another op's alias; another op's name
        with pytest.raises(AssertionError, match="alias"):
            check_facts({**OPS, "twin": dataclasses.replace(relu, name="twin", aliases=aliases)})
    with pytest.raises(AssertionError, match="import_kind"):
        check_facts({**OPS, "twin": dataclasses.replace(relu, name="twin", import_kind="relu")})


# --- 2. valid for every op, and true of the code ------------------------------------------------

@pytest.mark.parametrize("name", sorted(OPS))
def test_every_fact_of_every_row_is_valid(name):
    op = OPS[name]
    assert isinstance(op.keeps_zero, bool) or callable(op.keeps_zero)
    assert isinstance(op.zeroable, bool) and isinstance(op.bn_folds_into, bool)
    assert op.inference in INFERENCE
    assert op.init is None or op.init in INIT_POLICIES
    assert op.import_kind is None or op.import_kind in _LAYERS
    assert isinstance(op.aliases, tuple) and all(a == a.lower() and a not in OPS for a in op.aliases)


def test_weight_import_knows_exactly_the_kinds_of_the_table():
    assert set(_LAYERS) == {"conv", "bn", "linear", "layernorm", "groupnorm", "scale", "prelu"}


@pytest.fixture(scope="module")
def allops():
    """Every op of the table, in the one test a new op must join (test_onnx_backend's ALL_OPS)."""
    g = check_text(ALL_OPS).graph
    assert {n.op for n in g.nodes[1:]} == set(OPS)
    return g


def _alone(g: Graph, node: Node, then: str | None = None, path: str = "op", **changes) -> Graph:
    """`node` (its args updated by `changes`) at `path`, on an input of its main input's shape; a
    variadic op's other input is a sigmoid of the input (same shape, never 0); `then` an op after it."""
    shape = g[node.inputs[0]].shape
    nodes = [Node("input", "input", freeze({}), (), node.loc, shape=shape)]
    args, ins = {**node.args, **changes}, ("input",)
    if OPS[node.op].variadic:
        nodes.append(Node("g", "sigmoid", freeze({}), ("input",), node.loc, shape=shape))
        args, ins = {**args, "from": ("g",)}, ("input", "g")
    if "project_from" in args:
        args["project_from"] = None
    out = OPS[node.op].shape(args, [shape] * len(ins))
    nodes.append(Node(path, node.op, freeze(args), ins, node.loc, shape=out, block="r", role="body"))
    if then:
        nodes.append(Node("then", then, freeze(OPS[then].with_defaults()), (path,), node.loc, shape=out))
    return Graph(node.op, tuple(nodes), nodes[-1].path)


def _cases(g: Graph):
    """Every node of ALL_OPS, and for a fact that the arguments decide, the node with each bias."""
    for n in g.nodes[1:]:
        yield n, {}
        if callable(OPS[n.op].keeps_zero) and "bias" in n.args:
            yield n, {"bias": not n.args["bias"]}


def _run(graph: Graph, x: np.ndarray, seed: int = 0) -> np.ndarray:
    with torch.no_grad():
        return resgraph.to_torch(graph, seed=seed).eval()(torch.from_numpy(x)).numpy()


def test_keeps_zero_is_what_the_module_does_at_initialisation(allops):
    """keeps_zero: a zero input (the main one) gives exactly 0 in the PyTorch module at initialisation;
    not keeps_zero: it does not (a sigmoid, a bias, an add's other input)."""
    wrong = []
    for n, changes in _cases(allops):
        g = _alone(allops, n, **changes)
        y = _run(g, np.zeros((2, *g.nodes[0].shape), np.float32))
        says = OPS[n.op].zero_in_zero_out(g["op"].args)
        if bool((y == 0).all()) != says:
            wrong.append(f"{n.path} ({n.op}{changes or ''}): keeps_zero {says}, but 0 -> max |y| {np.abs(y).max()}")
    assert not wrong, wrong


def test_noops_are_removed_and_are_the_identity(allops):
    for n in allops.nodes[1:]:
        g = _alone(allops, n)
        dropped, _ = drop_noops(g, {})
        assert ("op" not in dropped) == (OPS[n.op].inference == "noop"), n.path
        if OPS[n.op].inference == "noop":
            xi = np.random.default_rng(0).standard_normal((2, *g.nodes[0].shape)).astype(np.float32)
            assert np.array_equal(_run(g, xi), xi), n.path


def test_a_bn_folds_exactly_into_the_ops_that_say_so(allops):
    """bn_folds_into: fold_batchnorm removes a bn after the op and the outputs stay (random bn
    statistics); the others keep their bn. Inserted-only ops (zeropad) are never followed by a bn."""
    for n in allops.nodes[1:]:
        if not OPS[n.op].user:
            continue
        g = _alone(allops, n, then="bn")
        w = random_weights(g)
        g2, w2 = fold_batchnorm(g, w)
        assert ("then" not in g2) == OPS[n.op].bn_folds_into, n.path
        x = np.random.default_rng(1).standard_normal((3, *g.nodes[0].shape)).astype(np.float32)
        assert np.abs(torch_eval(g, w, x) - torch_eval(g2, w2, x)).max() <= 1e-4, n.path


def _params(graph: Graph, **policy) -> dict:
    m = resgraph.to_torch(graph, init=False)
    init_weights(m, graph, seed=0, policy=policy)
    return {k: v.clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_parameters_take_the_init_policy_the_row_names(allops):
    """The policy a row names fits the module its lowering builds, and is the one init_weights applies:
    the spec's conv policy moves a conv's weights only, the linear policy a linear's only."""
    from torch import nn

    from resgraph.backends.torch.modules import Scale
    modules = {"conv": (nn.Conv2d, nn.ConvTranspose2d), "linear": (nn.Linear,), "scale": (Scale, nn.PReLU),
               "norm": (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)}
    for n in allops.nodes[1:]:
        op, g = OPS[n.op], _alone(allops, n)
        p = _params(g)
        assert bool(p) == (op.init is not None), n.path
        if op.init in modules:
            assert isinstance(resgraph.to_torch(g, init=False).get_submodule("op"), modules[op.init]), n.path
        conv_moves = not _same(p, _params(g, conv="xavier_uniform"))
        linear_moves = not _same(p, _params(g, linear="xavier_uniform"))
        if op.init == "conv":
            assert conv_moves and not linear_moves, n.path
        elif op.init == "linear":
            assert linear_moves and not conv_moves, n.path
        elif op.init == "norm":
            assert not (conv_moves or linear_moves), n.path
            assert torch.equal(p["op.weight"], torch.ones_like(p["op.weight"])) and not p["op.bias"].any(), n.path
        elif op.init == "scale":
            assert not (conv_moves or linear_moves) and (p["op.weight"] == n.args["init"]).all(), n.path
        elif op.init == "parts":   # an explicit Ws: a conv (+ bn) on maps, a linear on vectors
            assert conv_moves != linear_moves, n.path


def test_zeroable_layers_are_zeroed_and_then_output_zero(allops):
    """zero_residual picks the last zeroable layer of a body; zeroing its weight makes its output its
    bias, 0 at initialisation, whatever the input."""
    for n in allops.nodes[1:]:
        g = _alone(allops, n, path="r.op")
        add = Node("r", "add", freeze(OPS["add"].with_defaults(**{"from": ("input",)})), ("r.op", "input"), n.loc,
                   shape=g["r.op"].shape, block="r", role="add")
        body = Graph(g.name, (*g.nodes, add), "r")
        assert zero_residual_layers(body) == ([("r.op", True)] if OPS[n.op].zeroable else []), n.path
        if OPS[n.op].zeroable:
            m = resgraph.to_torch(g, seed=0).eval()
            with torch.no_grad():
                m.get_submodule("r.op").weight.zero_()
                y = m(torch.randn(2, *g.nodes[0].shape))
            assert not y.any(), n.path


def test_weight_import_pairs_each_tensor_as_its_ops_kind(allops):
    for n in allops.nodes[1:]:
        g = _alone(allops, n)
        m = resgraph.to_torch(g, init=False)
        kinds = {entry(m, k)[2] for k in m.state_dict()}
        want = OPS[n.op].import_kind
        if want is not None:
            assert kinds == {want}, n.path
        elif n.op == "project":   # its conv and bn, or its linear, pair as those ops
            assert kinds and kinds <= set(_LAYERS), n.path
        else:
            assert not kinds, n.path


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_alias_gets_the_hint_naming_its_op(name):
    for alias in OPS[name].aliases:
        for spelt in (alias, alias.upper()):
            with pytest.raises(ResgraphError) as e:
                check_text(f"resgraph: 1\nname: t\ninput: {{shape: [3, 4, 4]}}\nlayers:\n  - {spelt}\n")
            (d,) = e.value.diagnostics
            assert d.message == f"unknown op or block '{spelt}'" and d.hint == f"resgraph calls it '{name}'"


# --- 3. adding an op changes exactly the files docs/architecture.md lists ----------------------

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def listed_files(doc: str) -> list[str]:
    """The package files that the "Adding an op" list of docs/architecture.md names: the path each
    numbered item begins with. The count in its heading must agree."""
    section = doc.split("## The op table: one home per op fact\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"\*\*Adding an op changes (\w+) files of the package[^\n]*\*\*\n\n((?:\d+\. .*\n(?: {3}.*\n)*)+)",
                  section)
    assert m, "the 'Adding an op' list of docs/architecture.md is missing or reworded"
    files = re.findall(r"^\d+\. `(resgraph/[\w/]+\.py)`", m.group(2), re.MULTILINE)
    assert len(files) == NUMBERS[m.group(1)], (m.group(1), files)
    return files


# How to add `negate` (y = -x) to each file the doc may list, in the style of its neighbours.
NEGATE = {
    "resgraph/ops/table.py": ("    # inserted by passes only\n", '''\
    OpDef("negate", {}, unchanged, doc="y = -x",
          keeps_zero=True, zeroable=False, inference="keep", bn_folds_into=False, init=None, import_kind=None,
          aliases=("neg",)),
'''),
    "resgraph/backends/torch/lower.py": ('    "identity": identity, "project": project, "zeropad": zeropad,\n',
                                         '    "negate": pointwise(torch.neg),\n'),
    "resgraph/backends/onnx/lower.py": ('    "identity": simple("Identity"), "project": project, "zeropad": zeropad,\n',
                                        '    "negate": simple("Neg"),\n'),
}

NEGATE_SPEC = """resgraph: 1
name: neg
input: {name: x, shape: [3, 8, 8]}
layers:
  - conv: {out: 4, kernel: 3}
  - negate
  - bn
  - relu
  - residual:
      layers:
        - conv: {out: 4, kernel: 3}
        - negate
  - global_avgpool
  - flatten
  - linear: {out: 5}
  - negate
"""

# Run with PYTHONPATH at the copy: the spec checks, its torch module negates, ONNX Runtime agrees.
NEGATE_CHECK = textwrap.dedent('''
    import sys
    import numpy as np
    import resgraph
    assert resgraph.__file__.startswith(sys.argv[1]), resgraph.__file__   # the copy, not the repository
    from resgraph.backends.onnx import to_onnx   # first: a missing ONNX lowering fails here
    import onnxruntime as ort
    import torch
    from resgraph.errors import ResgraphError
    from resgraph.frontend import check_text
    from resgraph.passes.inference import for_inference
    spec = sys.stdin.read()
    checked = check_text(spec)
    m = resgraph.to_torch(checked, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
        plain = resgraph.to_torch(check_text(spec.rstrip().rpartition("\\n")[0] + "\\n"), init=False).eval()
        plain.load_state_dict(m.state_dict())
        assert np.array_equal(ref, -plain(torch.from_numpy(x)).numpy())   # y = -x
    w = {k: v.numpy() for k, v in m.state_dict().items()}
    for fold in (False, True):
        s = ort.InferenceSession(to_onnx(*for_inference(checked.graph, w, fold=fold)).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
        got = s.run(None, {"x": x})[0]
        assert np.abs(got - ref).max() <= 1e-4, (fold, float(np.abs(got - ref).max()))
    try:
        check_text(spec.replace("- negate\\n", "- Neg\\n", 1))
        raise SystemExit("the alias was not refused")
    except ResgraphError as e:
        assert e.diagnostics[0].hint == "resgraph calls it 'negate'", e.diagnostics[0].hint
    print("negate: ok")
''')


def _package_with_negate(root, files: list[str]):
    """A copy of the package under `root` with `negate` added to `files`, and nothing else changed."""
    shutil.copytree(ROOT / "resgraph", root / "resgraph", ignore=shutil.ignore_patterns("__pycache__"))
    for f in files:
        assert f in NEGATE, f"docs/architecture.md lists {f}: tell this test how negate goes there (NEGATE)"
        anchor, add = NEGATE[f]
        text = (root / f).read_text()
        assert text.count(anchor) == 1, (f, anchor)
        (root / f).write_text(text.replace(anchor, add + anchor if f.endswith("table.py") else anchor + add))
    changed = {str(p.relative_to(root)) for p in (root / "resgraph").rglob("*.py")
               if p.read_bytes() != (ROOT / p.relative_to(root)).read_bytes()}
    assert changed == set(files), changed


def _run_negate(root) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", NEGATE_CHECK, str(root)], input=NEGATE_SPEC, cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_throwaway_op_needs_exactly_the_listed_files(tmp_path):
    """Add `negate` to exactly the package files that docs/architecture.md says an op needs: a spec
    using it checks, builds, compiles to ONNX and matches PyTorch. Leave out the ONNX lowering and
    the copy refuses at import, with check_lowerings' message."""
    files = listed_files((ROOT / "docs" / "architecture.md").read_text())
    _package_with_negate(tmp_path / "all", files)
    r = _run_negate(tmp_path / "all")
    assert r.returncode == 0 and "negate: ok" in r.stdout, r.stdout + r.stderr

    onnx_lower = "resgraph/backends/onnx/lower.py"
    assert onnx_lower in files
    _package_with_negate(tmp_path / "short", [f for f in files if f != onnx_lower])
    r = _run_negate(tmp_path / "short")
    assert r.returncode != 0
    assert ("ImportError: resgraph's ONNX back end has no lowering for op(s) negate: add them to LOWER in "
            "resgraph.backends.onnx.lower") in r.stderr, r.stderr
