"""passes/sizes.py against brute force: for every candidate size of an input axis, the shapes
re-inferred one size at a time with the op table's own shape rules (every add's inputs equal,
every flatten at its reference width) — the definition of "every edge matches" — and the sweep
must agree on every size, on which node refuses each failing size first, and on the output's size."""
from __future__ import annotations

import time

import pytest

import resgraph
from conftest import ROOT
from resgraph.ops import OPS, ShapeError
from resgraph.passes.sizes import axis_sizes, compact

# the docs' U-Net, its first conv unpadded: the joins need (H - 2) / 4 whole, i.e. H = 2 (mod 4)
UNET_VALID = """resgraph: 1
name: unet_valid
input: {shape: [3, 66, 66]}
blocks:
  double:
    args: {out: null, first_padding: same}
    layers: [conv: {out: $out, kernel: 3, padding: $first_padding}, bn, relu, conv: {out: $out, kernel: 3}, bn, relu]
  down:
    args: {out: null}
    layers: [maxpool: {kernel: 2}, double: {out: $out}]
  up:
    args: {out: null, skip: tensor}
    layers:
      - conv_transpose: {out: $out, kernel: 2, stride: 2}
      - concat: {from: [skip]}
      - double: {out: $out}
layers:
  - double: {id: enc1, out: 16, first_padding: valid}
  - down: {id: enc2, out: 32}
  - down: {id: bottom, out: 64}
  - up: {id: dec2, out: 32, skip: enc2}
  - up: {id: dec1, out: 16, skip: enc1}
  - conv: {id: head, out: 2, kernel: 1}
"""
# an odd kernel at stride 2 without padding (floor((H - 1) / 2)), then a residual body whose unpadded
# 2x2 stride-2 conv gives floor(n / 2) where its Ws gives ceil(n / 2): H = 1 or 2 (mod 4) only
ODD = """resgraph: 1
name: odd_strides
input: {shape: [3, 65, 65]}
layers:
  - conv: {out: 8, kernel: 3, stride: 2, padding: valid}
  - residual:
      layers: [conv: {out: 16, kernel: 2, stride: 2, padding: valid}, relu, conv: {out: 16, kernel: 3}]
  - residual:
      layers: [conv: {out: 32, kernel: 5, stride: 2, padding: 2}, relu, conv: {out: 32, kernel: 3}]
  - avgpool: {kernel: 3, stride: 2, ceil_mode: true}
  - global_avgpool
  - flatten
  - linear: {out: 10}
"""
# ceil_mode windows whose last start falls in the padding (PyTorch drops that window): odd sizes here
CEIL = """resgraph: 1
name: ceil_pools
input: {shape: [4, 33, 33]}
layers:
  - avgpool: {kernel: 2, stride: 2, padding: 1, ceil_mode: true}
  - maxpool: {kernel: 3, stride: 3, padding: 1, ceil_mode: true}
  - conv: {out: 4, kernel: 1}
"""
FLAT = """resgraph: 1
name: flat_head
input: {shape: [1, 28, 28]}
layers:
  - conv: {out: 4, kernel: 3, stride: 2}
  - flatten
  - linear: {out: 10}
"""


def brute(g, axis: int, sizes, varying=("input",)) -> list:
    """(path, None) for each size: the first node whose shape rule or edge refuses it, or None. The
    inputs in `varying` take each size on `axis`; any others keep theirs."""
    out = []
    for n in sizes:
        shapes, failed = {}, None
        for node in g.nodes:
            if node.op == "input":
                s = list(node.shape)
                if node.path in varying:
                    s[axis] = n
                shapes[node.path] = tuple(s)
                continue
            ins = [shapes[i] for i in node.inputs]
            try:
                if node.op == "add" and any(x != ins[0] for x in ins[1:]):
                    raise ShapeError("add inputs differ")
                if node.op == "flatten" and ins[0] != g[node.inputs[0]].shape:
                    raise ShapeError("flatten width")
                shapes[node.path] = OPS[node.op].shape(dict(node.args), ins)
            except ShapeError:
                failed = node.path
                break
        out.append((failed, None if failed else shapes[g.output]))
    return out


CASES = [("resnet18", 1, 300), ("resnet50", 2, 260), ("cifar_resnet20_a", 1, 200), ("densenet121", 1, 160),
         ("mobilenet_v3_small", 2, 300), ("convnext_tiny", 1, 200), ("efficientnet_b0", 1, 200),
         ("regnet_y_400mf", 2, 200), ("digits_resnet", 1, 64)]


@pytest.mark.parametrize("name, axis, top", CASES + [(s, 1, 300) for s in ("unet_valid", "odd_strides", "flat_head",
                                                                          "ceil_pools")])
def test_the_sweep_equals_brute_force_at_every_size(name, axis, top, write_spec):
    text = {"unet_valid": UNET_VALID, "odd_strides": ODD, "flat_head": FLAT, "ceil_pools": CEIL}.get(name)
    path = write_spec(text) if text else str(ROOT / "specs" / f"{name}.yaml")
    g = resgraph.check(path).graph
    sizes = range(1, top + 1)
    r = axis_sizes(g, axis, sizes)
    want = brute(g, axis, sizes)
    assert [bool(v) for v in r.valid] == [f is None for f, _ in want]
    assert [None if v else r.why(n)[0] for n, v in zip(sizes, r.valid)] == [f for f, _ in want]
    if r.output is not None:
        assert [int(o) for o, v in zip(r.output, r.valid) if v] == [s[axis] for f, s in want if f is None]
    assert r.valid.any()   # every spec takes its own size at least


def test_what_the_sweep_finds_on_nets_where_the_answer_is_not_a_stride_multiple(write_spec):
    unet = axis_sizes(resgraph.check(write_spec(UNET_VALID)).graph, 1, range(1, 1025))
    valid = [int(s) for s in unet.sizes[unet.valid]]
    assert valid == list(range(6, 1025, 4)) and compact(valid) == "every 4th size from 6 to 1022"
    assert unet.why(64) == unet.why(68) == ("dec2.concat1", "concat joins H of 'dec2.conv_transpose1' and "
                                           "'enc2.double1.relu2', which differ")
    assert unet.why(67)[0] == "dec1.concat1" and unet.why(2)[0] == "enc1.conv1"
    odd = axis_sizes(resgraph.check(write_spec(ODD)).graph, 1, range(1, 200))
    valid = [int(s) for s in odd.sizes[odd.valid]]
    assert valid == [n for n in range(13, 200) if n % 4 in (1, 2)] and compact(valid).startswith("13, 14, 17, 18, 21")
    assert odd.why(2)[1].startswith("conv output H collapses") and odd.why(67)[0] == "residual1"
    flat = axis_sizes(resgraph.check(write_spec(FLAT)).graph, 2, range(1, 100))
    assert [int(s) for s in flat.sizes[flat.valid]] == [27, 28] and "global_avgpool" in flat.why(30)[1]


def test_resnet152_at_4096_sizes_costs_little_beside_check():
    path = str(ROOT / "specs" / "resnet152.yaml")
    t = time.perf_counter()
    g = resgraph.check(path).graph
    checked = time.perf_counter() - t
    axis_sizes(g, 1, range(1, 8))                                 # numpy's import is not the sweep's
    t = time.perf_counter()
    r = axis_sizes(g, 1, range(1, 4097))
    swept = time.perf_counter() - t
    assert r.valid.all() and swept < max(0.2 * checked, 0.05), (swept, checked)


def test_compact_words():
    assert compact([]) == "no size" and compact([7]) == "7 only"
    assert compact(range(32, 2049)) == "every size from 32 to 2048"
    assert compact(range(64, 2049, 32)) == "multiples of 32 from 64 to 2048"
    assert compact([1, 2, 4, 8]) == "1, 2, 4, 8"


# --- the language: sizes: {NAME: {min, max}} and input: {shape: [C, H, W]} with names ---------------

def sized(text: str, sizes: str = "  H: {min: 1, max: 300}\n  W: {min: 1, max: 300}\n", shape="[3, H, W]") -> str:
    """A spec of this file with size variables instead of its fixed input."""
    import re
    head, rest = text.split("\n", 1)
    rest = re.sub(r"input: \{shape: \[[^\]]*\]\}", f"sizes:\n{sizes}input: {{shape: {shape}}}", rest, count=1)
    return head + "\n" + rest


def test_check_reports_the_exact_valid_sizes_as_brute_force_finds_them(write_spec):
    import json

    from conftest import run_cli
    path = write_spec(sized(UNET_VALID, "  H: {min: 1, max: 300}\n  W: {min: 1, max: 120}\n"))
    p = run_cli("check", path, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    g = resgraph.check(path).graph
    for name, axis, top in (("H", 1, 300), ("W", 2, 120)):
        assert d["valid_sizes"][name] == [n for n, (f, _) in zip(range(1, top + 1), brute(g, axis, range(1, top + 1)))
                                          if f is None]
    assert d["inputs"] == [{"name": "input", "shape": [3, "H", "W"]}]
    assert d["outputs"] == [{"name": "output", "shape": [2, "H - 2", "W - 2"]}]   # the unpadded first conv
    # the contract's one input and output in whole numbers: at the size macs is given at
    assert d["input"]["shape"] == [3, 6, 6] and d["output"]["shape"] == [2, 4, 4]
    assert d["macs_at"] == {"H": 6, "W": 6} and d["macs"] == resgraph.check(write_spec(
        UNET_VALID.replace("[3, 66, 66]", "[3, 6, 6]"), "at6.yaml")).macs
    p = run_cli("check", path)
    assert "input [3, H, W] -> output [2, H - 2, W - 2]" in p.stdout and "H: every 4th size from 6 to 298" in p.stdout
    assert "MACs" in p.stdout and "at 6x6" in p.stdout


def test_a_stride_two_net_reports_its_output_as_an_expression_and_a_list_where_no_rule_fits(write_spec):
    d = resgraph.check(write_spec(sized(ODD, "  S: {min: 1, max: 199}\n", "[3, S, S]"))).to_json()
    assert d["valid_sizes"]["S"] == [n for n in range(13, 200) if n % 4 in (1, 2)] and d["output"]["shape"] == [10]
    c = resgraph.check(write_spec(sized(CEIL, "  S: {min: 1, max: 99}\n", "[4, S, S]"), "ceil.yaml"))
    expr = c.sizes.output_shape[1]
    assert expr.startswith("floor((S + ") and c.sizes.valid["S"] == list(range(1, 100))
    import math
    outs = [s[1] for _, s in brute(c.graph, 1, range(1, 100))]
    assert [eval(expr, {"floor": math.floor, "ceil": math.ceil, "S": n}) for n in range(1, 100)] == outs


@pytest.mark.parametrize("text, where, says", [
    (sized(FLAT, "  S: {min: 8, max: 64}\n", "[1, S, S]"), ":8:5:", "flatten of a map whose size varies with S"),
    (sized(FLAT, "  S: {min: 8, max: 64}\n", "[1, S, Q]"), ":5:23:", "input dimension 'Q' is not a size variable"),
    (sized(FLAT, "  S: {min: 8, max: 64}\n", "[S, 28, 28]"), ":5:17:", "input dimension 'S' is not a size variable"),
    (sized(FLAT, "  S: {min: 64, max: 8}\n", "[1, S, S]"), ":4:21:", "S.max 8 is below its min 64"),
    (sized(FLAT, "  S: {min: 0, max: 8}\n", "[1, S, S]"), ":4:12:", "S.min must be a whole number of pixels"),
    (sized(FLAT, "  S: {max: 8}\n", "[1, S, S]"), ":4:3:", "a size variable needs its min"),
    (sized(ODD, "  S: {min: 1, max: 4}\n", "[3, S, S]"), ":9:16:",
     "conv output H collapses to 0: floor((1 + 2*0 - 1*(2-1) - 1) / 2) + 1 = 0 for input [8, 1, 1] (at S = 4: every "
     "size in range fails)"),
])
def test_size_variable_errors_are_located_and_exit_1(text, where, says, write_spec):
    from conftest import run_cli
    path = write_spec(text)
    p = run_cli("check", path)
    assert p.returncode == 1 and f"{path}{where} error: " in p.stderr and says in p.stderr, p.stderr
    assert "hint:" in p.stderr and "Traceback" not in p.stderr


def test_train_takes_fixed_sizes_and_says_so_writing_nothing(write_spec, tmp_path):
    """compile takes size variables (tests/compile/test_sized_compile.py); train samples one size."""
    from conftest import run_cli
    path = write_spec(sized(UNET_VALID))
    pytest.importorskip("torch", reason="the torch extra is not installed")
    p = run_cli("train", path, "--data", "digits", "-o", str(tmp_path / "run"), "--epochs", "1")
    assert p.returncode == 1 and "train takes fixed input sizes" in p.stderr and not (tmp_path / "run").exists()


def test_summary_shows_a_sized_spec_at_one_size_and_says_which():
    from conftest import run_cli
    unet = str(ROOT / "specs" / "unet.yaml")
    p = run_cli("summary", unet, "--depth", "1", "--size", "64x96")
    assert p.returncode == 0 and "unet  (unet.yaml)  at image 64x96" in p.stdout
    assert "[2, 64, 96]" in p.stdout and "MACs: 150,700,032" in p.stdout      # 25,116,672 at 32x32, times 6
    p = run_cli("summary", unet, "--depth", "1")
    assert "at image 1024x1024" in p.stdout and "[3, 1024, 1024]" in p.stdout   # the reference: the largest size
    p = run_cli("summary", unet, "--size", "66x64")
    assert p.returncode == 1 and "--size: error: H = 66 is not a size the network takes" in p.stderr
    assert "the nearest valid sizes are 64 or 68" in p.stderr


def test_check_at_gives_the_macs_at_one_size():
    import json

    from conftest import run_cli
    unet = str(ROOT / "specs" / "unet.yaml")
    d = json.loads(run_cli("check", unet, "--json").stdout)
    assert d["macs"] == 25_116_672 and d["macs_at"] == {"H": 32, "W": 32}           # the smallest valid size
    d = json.loads(run_cli("check", unet, "--json", "--at", "64x96").stdout)
    assert d["macs"] == 150_700_032 and d["macs_at"] == {"H": 64, "W": 96}          # summary --size's total
    p = run_cli("check", unet, "--at", "66x96")
    assert p.returncode == 1 and "--at: error: H = 66 is not a size the network takes" in p.stderr
    p = run_cli("check", str(ROOT / "specs" / "resnet18.yaml"), "--at", "64x64")
    assert p.returncode == 1 and "--at: error: the spec's input has a fixed size" in p.stderr
