"""Sweeps: expression functions, list variables, --var on the command line and vars= in Python, and
`check --var n=3,5,7` (one row per value). The CIFAR ResNets swept over n give the paper's counts."""
import json

import pytest

import resgraph
from conftest import ROOT, run_cli
from resgraph.errors import OptionError, SpecError
from resgraph.spec.expr import ExprError, evaluate, make_divisible

CIFAR = "specs/cifar_resnet20_a.yaml"
# He et al. 2015, table 6 (option A: no projection parameters): n -> depth, params in millions
PAPER = {3: (20, 0.27), 5: (32, 0.46), 7: (44, 0.66), 9: (56, 0.85), 18: (110, 1.7)}


def test_make_divisible_is_torchvisions():
    tv = pytest.importorskip("torchvision.models._utils")
    for v in [x * 0.25 for x in range(1, 2000)] + [3, 7, 12, 20, 37, 100]:
        for d in (1, 2, 4, 8, 16, 32):
            assert make_divisible(v, d) == tv._make_divisible(v, d), (v, d)
            assert make_divisible(v, d, 48) == tv._make_divisible(v, d, 48), (v, d)
            assert evaluate(f"make_divisible($v, {d})", {"v": v}) == tv._make_divisible(v, d)


@pytest.mark.parametrize("text,value", [
    ("min($a, 3)", 3), ("max($a, 3, 7)", 7), ("max($w)", 64), ("min($w) * 2", 32), ("round(2.5)", 2),
    ("round($a * 0.75)", 4), ("ceil($a * 1.1)", 6), ("floor(-0.5)", -1), ("make_divisible($c * 0.75, 8)", 72),
    ("$w[$copy]", 32), ("$w[2] // 2", 32), ("$w[$copy + 1] - $w[0]", 48), ("$acts[1]", "gelu"),
    ("max($w[0], min($a, 9)) + 1", 17),
])
def test_functions_and_indexing(text, value):
    got = evaluate(text, {"a": 5, "c": 96, "w": [16, 32, 64], "copy": 1, "acts": ["relu", "gelu"]})
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text,fragment,offset", [
    ("$w[3]", "index 3 is out of range for $w, which has 3 values", 3), ("$w[0.5]", "not a whole number", 3),
    ("$a[0]", "$a is 5, not a list", 2), ("round($a, 2)", "round() takes 1 argument, got 2", 0),
    ("make_divisible($a, 0)", "divisor must be a positive integer", 19), ("min($acts[0], 1)", "not a number", 5),
    ("$w + 1", "$w is [16, 32, 64], not a number", 1), ("[1, 2][0]", "cannot read '[1, 2][0]'", 0),
    ("open('x')", "cannot read", 0), ("max(1, 2", "missing ')'", 0),
])
def test_function_and_index_errors(text, fragment, offset):
    with pytest.raises(ExprError) as info:
        evaluate(text, {"a": 5, "w": [16, 32, 64], "acts": ["relu"]})
    assert fragment in info.value.message and info.value.hint and info.value.offset == offset


LISTS = """resgraph: 1
name: lists
input: {shape: [3, 16, 16]}
vars:
  widths:
    - 8
    - 16   # a comment
  k: 3
layers:
  - conv: {out: "$widths[$copy]", kernel: $k, repeat: 2}
  - conv: {out: "make_divisible($widths[1] * 1.5, 8)", kernel: 1}
"""


def test_list_variable_indexed_per_copy():
    c = resgraph.check_text(LISTS, "lists.yaml")
    assert [c.graph[p].shape[0] for p in ("conv1.0", "conv1.1", "conv2")] == [8, 16, 24]


def test_index_out_of_range_is_located():
    with pytest.raises(SpecError) as info:
        resgraph.check_text(LISTS.replace("repeat: 2", "repeat: 3"), "lists.yaml")
    d = info.value.diagnostics[0]
    assert (d.loc.file, d.loc.line) == ("lists.yaml", 10) and LISTS.splitlines()[9][d.loc.col - 1] == "$"
    assert "index 2 is out of range for $widths, which has 2 values" in d.message
    assert "0 to 1" in d.hint and "$copy runs from 0 to n - 1" in d.hint


def test_vars_override_rewrites_the_text_in_place():
    c = resgraph.check_text(LISTS, "lists.yaml", vars={"widths": [4, 12, 20], "k": 1})
    assert [c.graph[p].shape[0] for p in ("conv1.0", "conv1.1", "conv2")] == [4, 12, 24]
    lines = c.spec.source.splitlines()
    assert len(lines) == len(LISTS.splitlines()) 
    assert lines[4:8] == ["  widths:", "    [4, 12, 20]", "", "  k: 1"]   # the block list's lines kept
    assert lines[9:] == LISTS.splitlines()[9:] and c.spec.sha256 != resgraph.check_text(LISTS).spec.sha256


@pytest.mark.parametrize("override,fragment,hint", [
    ({"widht": [8]}, "declares no variable 'widht'", "did you mean 'widths'?"),
    ({"k": [3]}, "'k' is a number in lists.yaml (3); [3] is a list", "give a number"),
    ({"widths": 8}, "'widths' is a list in lists.yaml ([8, 16]); 8 is a number", "give a list"),
    ({"k": float("nan")}, "is not a value a variable takes", "a number, a word"),
    ({"k": {"a": 1}}, "is not a value a variable takes", "a number, a word"),
])
def test_bad_overrides_are_clean_errors(override, fragment, hint):
    with pytest.raises(OptionError) as info:
        resgraph.check_text(LISTS, "lists.yaml", vars=override)
    d = info.value.diagnostics[0]
    assert fragment in d.message and hint in d.hint and d.loc.file.startswith("vars ")


def test_cifar_sweep_gives_the_papers_counts():
    """Table 6 of He et al. 2015: ResNet-20/32/44/56/110 from one spec, n = 3, 5, 7, 9, 18; each the
    shipped fixed-depth spec exactly (params, MACs, Ws), for option A and option B."""
    for n, (depth, millions) in PAPER.items():
        for option in "ab":
            swept = resgraph.check(f"specs/cifar_resnet20_{option}.yaml", vars={"n": n})
            fixed = resgraph.check(f"specs/cifar_resnet{depth}_{option}.yaml")
            assert (swept.params, swept.macs) == (fixed.params, fixed.macs), (n, option)
            assert [p.to_json() for p in swept.graph.projections] == [p.to_json() for p in fixed.graph.projections]
            assert round(swept.params / 1e6, 1 if n == 18 else 2) == millions or option == "b", (n, swept.params)
        assert sum(p.params for p in swept.graph.projections) > 0   # option B: 1x1 projections


def test_check_sweep_json_and_table():
    p = run_cli("check", CIFAR, "--var", "n=3,5,7,9,18", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    single = json.loads(run_cli("check", "specs/cifar_resnet56_a.yaml", "--json").stdout)
    assert [r["vars"] for r in rows] == [{"n": n} for n in PAPER]
    assert [round(r["params"] / 1e6, 2) for r in rows] == [0.27, 0.46, 0.66, 0.85, 1.73]
    assert {k: v for k, v in rows[3].items() if k != "vars"} == {**single, "name": "cifar_resnet20_a"}
    p = run_cli("check", CIFAR, "--var", "n=3,9")
    assert p.returncode == 0 and "n = 3, 9" in p.stdout
    assert "269,722" in p.stdout and "853,018" in p.stdout and "2: layer2.0, layer3.0" in p.stdout


def test_check_sweep_row_errors_and_usage():
    p = run_cli("check", CIFAR, "--var", "n=3,0", "--json")
    rows = json.loads(p.stdout)
    assert p.returncode == 1 and rows[0]["params"] == 269722 and "repeat must be" in rows[1]["errors"][0]["message"]
    p = run_cli("check", CIFAR, "--var", "m=3,5")
    assert p.returncode == 1 and p.stderr.count("declares no variable 'm'") == 1 and "valid variables: n" in p.stderr
    p = run_cli("summary", CIFAR, "--var", "n=3,5")
    assert p.returncode == 2 and "a sweep of several values is for 'resgraph check'" in p.stderr
    for bad in ("n=[3", "n=", "=3"):
        assert run_cli("check", CIFAR, "--var", bad).returncode == 2


def test_single_check_json_unchanged_and_var_applies():
    plain = run_cli("check", CIFAR, "--json")
    assert json.loads(plain.stdout)["params"] == 269722
    p = run_cli("check", CIFAR, "--json", "--var", "n=9")
    assert p.returncode == 0 and json.loads(p.stdout)["params"] == 853018 and "vars" not in json.loads(p.stdout)
    p = run_cli("check", CIFAR, "--var", "n=x")
    assert p.returncode == 1 and "'n' is a number" in p.stderr and "give a number" in p.stderr


def test_var_reaches_commands_that_read_the_spec_themselves(tmp_path):
    """init and compile check the spec inside their library call: --var reaches it, and the compiled
    folder's spec.yaml is the overridden spec (n: 9), which checks to the same network."""
    w, out = tmp_path / "w.safetensors", tmp_path / "c9"
    assert run_cli("init", CIFAR, "-o", str(w), "--var", "n=9").returncode == 0
    p = run_cli("compile", CIFAR, "--weights", str(w), "-o", str(out), "--var", "n=9")
    assert p.returncode == 0, p.stderr
    assert "vars: {n: 9}" in (out / "spec.yaml").read_text()
    assert resgraph.check(str(out / "spec.yaml")).params == 853018
    p = run_cli("compile", CIFAR, "--weights", str(w), "-o", str(tmp_path / "c3"))
    assert p.returncode == 1 and "does not fit" in p.stderr      # the n = 9 weights, the n = 3 spec
    p = run_cli("diff", CIFAR, "specs/cifar_resnet56_a.yaml", "--var", "n=9", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["entries"] == []
    p = run_cli("summary", CIFAR, "--var", "nn=9")
    assert p.returncode == 1 and "did you mean 'n'?" in p.stderr


def test_to_torch_takes_vars():
    pytest.importorskip("torch")
    m = resgraph.to_torch(str(ROOT / CIFAR), vars={"n": 5})
    assert sum(t.numel() for t in m.parameters()) == 464154
    with pytest.raises(TypeError, match="vars= applies to a spec path"):
        resgraph.to_torch(resgraph.check(str(ROOT / CIFAR)), vars={"n": 5})
