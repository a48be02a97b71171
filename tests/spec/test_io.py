"""`inputs:` and `outputs:`: several named inputs (read with in:/from:), any tensor of the graph as a
named output. What check reports for them, and every error a spec can make with them: located,
exit 1, with a hint."""
from __future__ import annotations

import json

import pytest

import resgraph
from conftest import run_cli

TWO_STREAMS = """resgraph: 1
name: two_streams
inputs:
  - {name: image, shape: [3, 32, 32]}
  - {name: mask, shape: [1, 32, 32]}
outputs:
  - {name: c3, from: s2}
  - {name: c4, from: s3.conv2}
  - {name: emb, from: head}
layers:
  - conv: {out: 8, kernel: 3, stride: 2, id: a}
  - conv: {out: 8, kernel: 3, stride: 2, id: m, in: mask}
  - add: {from: [a], id: s1}
  - conv: {out: 16, kernel: 3, stride: 2, id: s2}
  - residual:
      id: s3
      layers: [conv: {out: 32, kernel: 3, stride: 2}, relu, conv: {out: 32, kernel: 3}]
  - global_avgpool
  - flatten: {id: head}
"""


def test_check_reports_every_input_and_output_in_spec_order(write_spec):
    c = resgraph.check(write_spec(TWO_STREAMS))
    g = c.graph
    assert g.inputs == (("image", "input"), ("mask", "mask"))
    assert g.outputs == (("c3", "s2"), ("c4", "s3.conv2"), ("emb", "head"))
    assert g["m"].inputs == ("mask",) and g["a"].inputs == ("input",)
    d = c.to_json()
    assert d["input"] == d["inputs"][0] and d["output"] == d["outputs"][0]   # the first, for one-of-each readers
    assert d["inputs"] == [{"name": "image", "shape": [3, 32, 32]}, {"name": "mask", "shape": [1, 32, 32]}]
    assert d["outputs"] == [{"name": "c3", "shape": [16, 8, 8]}, {"name": "c4", "shape": [32, 4, 4]},
                            {"name": "emb", "shape": [32]}]
    text = str(g)
    assert text.startswith("def two_streams(image: f32[3, 32, 32], mask: f32[1, 32, 32]):")
    assert text.endswith("return (s2, s3_conv2, head)   # c3, c4, emb")
    p = run_cli("check", write_spec(TWO_STREAMS))
    assert p.returncode == 0 and ("image [3, 32, 32], mask [1, 32, 32] -> c3 [16, 8, 8], c4 [32, 4, 4], emb [32]"
                                  in p.stdout), p.stdout


def test_a_backbone_output_needs_no_head_and_nothing_after_it_is_dead(write_spec):
    """Outputs inside the graph keep their layers alive; a layer after every output is dead code."""
    text = TWO_STREAMS.replace("  - {name: emb, from: head}\n", "")
    w = resgraph.check(write_spec(text)).warnings
    assert [x.message for x in w] == ["'s3' (add) reaches none of the outputs",
                                      "'global_avgpool1' (global_avgpool) reaches none of the outputs",
                                      "'head' (flatten) reaches none of the outputs"]
    assert all("outputs:" in x.hint for x in w)


def test_size_variables_size_every_input_that_names_them(write_spec):
    text = TWO_STREAMS.replace("[3, 32, 32]", "[3, H, W]").replace("[1, 32, 32]", "[1, H, W]").replace(
        "inputs:", "sizes: {H: {min: 8, max: 64}, W: {min: 8, max: 64}}\ninputs:")
    d = resgraph.check(write_spec(text)).to_json()
    assert d["inputs"][1] == {"name": "mask", "shape": [1, "H", "W"]}
    assert d["outputs"][0]["shape"] == [16, "ceil(H / 4)", "ceil(W / 4)"] and d["outputs"][2]["shape"] == [32]
    assert d["valid_sizes"]["H"] == list(range(8, 65))
    # a mask at a fixed size joins the image only at that size
    fixed = text.replace("[1, H, W]", "[1, 32, 32]")
    d = resgraph.check(write_spec(fixed, "fixed.yaml")).to_json()
    # checked at the largest size (64), where the join of image (32) and mask (16) gets a stride-2 Ws:
    # a compiled model keeps it, so the image joins only where ceil(ceil(H / 2) / 2) = 16
    assert d["valid_sizes"] == {"H": [61, 62, 63, 64], "W": [61, 62, 63, 64]}
    assert d["projections"][0]["at"] == "s1" and d["projections"][0]["stride"] == 2


@pytest.mark.parametrize("mask", ["[1, H, W]", "[1, 32, 32]", "[1, 16, 16]"])
def test_the_sweep_over_two_inputs_equals_brute_force(mask, write_spec):
    """Both inputs take each size where both name H; a fixed mask keeps its own (and the join with
    it then decides): the sweep's answer is re-inferring every size one by one."""
    from test_sizes import brute
    from resgraph.passes.sizes import axis_sizes
    text = TWO_STREAMS.replace("[3, 32, 32]", "[3, H, W]").replace("[1, 32, 32]", mask).replace(
        "inputs:", "sizes: {H: {min: 1, max: 80}, W: {min: 1, max: 80}}\ninputs:")
    g = resgraph.check(write_spec(text)).graph
    varying = ("input", "mask") if "H" in mask else ("input",)
    for axis in (1, 2):
        r = axis_sizes(g, axis, range(1, 81), varying)
        want = brute(g, axis, range(1, 81), varying)
        assert [bool(v) for v in r.valid] == [f is None for f, _ in want], (mask, axis)
        assert [None if v else r.why(n)[0] for n, v in zip(range(1, 81), r.valid)] == [f for f, _ in want]
        assert r.valid.any()


def _error(write_spec, text, where, says, hint=None):
    path = write_spec(text)
    p = run_cli("check", path, "--json")
    assert p.returncode == 1, p.stdout
    errors = json.loads(p.stdout)["errors"]
    found = [e for e in errors if says in e["message"]]
    assert found, errors
    e = found[0]
    assert (e["line"], e["column"]) == where and e["hint"], e
    if hint:
        assert hint in e["hint"], e


@pytest.mark.parametrize("edit, where, says, hint", [
    (("from: s2}", "from: s22}"), (7, 22), "output 'c3': unknown id or path 's22'", "s2"),
    (("from: s3.conv2}", "from: s3.conv9}"), (8, 22), "unknown id or path 's3.conv9'", "s3.conv2"),
    (("{name: c4,", "{name: c3,"), (8, 12), "two outputs are named 'c3' (first at line 7)", "own name"),
    (("{name: emb, from: head}", "{name: emb, from: mask}"), (9, 23),
     "output 'emb' is the input 'mask' itself: no layer feeds it", "from: layer2"),
    (("{name: emb, from: head}", "{name: mask, from: head}"), (9, 12), "the output 'mask' has an input's name", None),
    (("{name: mask, shape: [1, 32, 32]}", "{name: image, shape: [1, 32, 32]}"), (5, 12),
     "two inputs are named 'image' (first at line 4)", None),
    (("id: s2}", "id: mask}"), (14, 47), "id 'mask' is also an input's name", "rename"),
    (("  - {name: emb, from: head}\n", "  - {name: emb}\n"), (9, 5), "an output needs 'from'", "from: layer2"),
    (("  - {name: emb, from: head}\n", "  - emb\n"), (9, 5), "an output must be a mapping", None),
    (("in: mask}", "in: maks}"), (12, 53), "unknown id 'maks'", "mask"),
    (("outputs:\n", "output: {name: x}\noutputs:\n"), (8, 3), "both 'output:' and 'outputs:' are given", None),
])
def test_io_errors_are_located_with_a_hint(edit, where, says, hint, write_spec):
    assert edit[0] in TWO_STREAMS
    _error(write_spec, TWO_STREAMS.replace(edit[0], edit[1], 1), where, says, hint)


def test_a_spec_needs_exactly_one_of_input_and_inputs(write_spec):
    both = TWO_STREAMS.replace("inputs:\n", "input: {shape: [3, 32, 32]}\ninputs:\n")
    _error(write_spec, both, (5, 3), "both 'input:' and 'inputs:' are given")
    neither = "\n".join(ln for ln in TWO_STREAMS.splitlines() if not ln.startswith(("inputs:", "  - {name: image",
                                                                                      "  - {name: mask")))
    _error(write_spec, neither, (1, 1), "missing 'input:'", "input: {shape: [3, 224, 224]}")
    empty = TWO_STREAMS.replace("outputs:\n  - {name: c3, from: s2}\n  - {name: c4, from: s3.conv2}\n"
                                "  - {name: emb, from: head}\n", "outputs: []\n")
    _error(write_spec, empty, (6, 10), "outputs must be a non-empty list")


def test_compile_writes_nothing_for_a_bad_output(write_spec, tmp_path):
    path = write_spec(TWO_STREAMS.replace("from: s2}", "from: s22}"))
    p = run_cli("compile", path, "-o", str(tmp_path / "out"))
    assert p.returncode == 1 and "unknown id or path 's22'" in p.stderr and "hint:" in p.stderr
    assert not (tmp_path / "out").exists()
