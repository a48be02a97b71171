"""Errors lead to their root cause: block errors name the call site, cycles print in dataflow order,
concat errors name each input by id with a hint for the case at hand."""
import re

import pytest

from conftest import run_cli
from resgraph.errors import SpecError
from resgraph.frontend import check_text

HEAD = "resgraph: 1\nname: t\ninput: {shape: [3, 32, 32]}\n"


def error(text) -> SpecError:
    with pytest.raises(SpecError) as e:
        check_text(HEAD + text, "t.yaml")
    return e.value


def test_a_shape_error_inside_a_block_points_at_its_line_and_at_the_call_that_made_it():
    e = error("blocks:\n  basic:\n    args: {out: null, g: 1}\n    residual:\n      layers:\n"
              "        - conv: {out: $out, kernel: 3, groups: $g}\n"
              "layers:\n  - conv: {out: 16, kernel: 3}\n  - basic: {out: 16}\n  - basic: {out: 16, g: 3}\n")
    (d,) = e.diagnostics
    assert d.loc.line == 9 and "groups=3" in d.message and d.message.endswith("(in basic2 from line 13)")


def test_nested_blocks_name_every_call_innermost_first():
    e = error("blocks:\n  inner:\n    args: {k: 3}\n    layers:\n      - maxpool: {kernel: $k}\n"
              "  outer:\n    args: {k: 3}\n    layers:\n      - inner: {k: $k}\n"
              "layers:\n  - outer: {k: 64}\n")
    (d,) = e.diagnostics
    assert d.loc.line == 8 and "collapses" in d.message
    assert d.message.endswith("(in outer1.inner1 from line 12, in outer1 from line 14)")


def test_a_cycle_prints_in_dataflow_order():
    e = error("layers:\n  - conv: {out: 4, kernel: 3, id: a, in: c}\n  - conv: {out: 4, kernel: 3, id: b}\n"
              "  - conv: {out: 4, kernel: 3, id: c}\n")
    assert "a -> b -> c -> a" in e.hint


def test_concat_names_each_input_and_fits_its_hint_to_the_case():
    e = error("layers:\n  - conv: {out: 16, kernel: 3, id: a}\n  - global_avgpool\n  - flatten: {id: v}\n"
              "  - concat: {from: [a]}\n  - conv: {out: 16, kernel: 3, stride: 2, in: a, id: half}\n"
              "  - concat: {from: [a, input]}\n")
    vec, maps = e.diagnostics
    assert "v [16] ++ a [16, 32, 32]" in vec.message and "a vector and a feature map" in vec.hint
    assert "half [16, 16, 16] ++ a [16, 32, 32] ++ input [3, 32, 32]" in maps.message
    assert "same H and W" in maps.hint and "vector" not in maps.hint


def test_shape_errors_come_in_graph_order_not_line_order():
    """The block is defined above the layers: its error (in the second layer) sorts first by line, but
    the first layer's error comes first in the graph, and is reported first."""
    e = error("blocks:\n  pool:\n    args: {k: 2}\n    layers:\n      - maxpool: {kernel: $k}\n"
              "layers:\n  - conv: {out: 8, kernel: 3, groups: 3}\n  - conv: {out: 8, kernel: 3, in: input, id: c}\n"
              "  - pool: {k: 64}\n")
    first, second = e.diagnostics
    assert first.loc.line == 10 and "groups=3" in first.message
    assert second.loc.line == 8 and "(in pool1 from line 12)" in second.message
    assert (e.line, e.message) == (first.loc.line, first.message)


def test_an_argument_error_inside_a_block_names_the_call_that_gave_the_value_once_per_value():
    e = error("blocks:\n  pool:\n    args: {k: 2}\n    layers:\n      - maxpool: {kernel: $k}\n"
              "layers:\n  - pool: {k: 2}\n  - pool: {k: -1}\n  - pool: {k: -1}\n  - pool: {k: 0}\n")
    a, b = e.diagnostics
    assert a.loc.line == b.loc.line == 8
    assert a.message.endswith("got -1 (in pool2 from line 11)") and b.message.endswith("got 0 (in pool4 from line 13)")


STAGES = """resgraph: 1
name: t
input: {shape: [3, 32, 32]}
blocks:
  basic:
    args: {out: null, stride: 1}
    residual:
      shortcut: zeropad
      layers:
        - conv: {out: $out, kernel: 3, stride: $stride}
        - bn
        - relu
        - conv: {out: $out, kernel: 3}
        - bn
      post: relu
layers:
  - conv: {out: 16, kernel: 3, id: stem}
  - basic: {id: layer1, out: 16}
  - residual:
      id: layer2
      layers:
        - conv: {out: 64, kernel: 3, padding: valid}
        - bn
      post: relu
  - basic: {id: layer3, out: 32, stride: 2}
FURTHER"""
# stage 2's body shrinks the map (valid padding: 32 -> 30) and widens it to 64: no Ws can join that to its
# input at line 19. What follows inherits the wrong shape: layer3's zeropad would shrink 64 -> 32 channels
# (reported at line 8, where the block is defined) and a concat with layer1 would join 15x15 to 32x32
CONCAT = "  - concat: {from: [layer1]}\n"
UNRELATED = "  - conv: {out: 8, kernel: 3, groups: 3, in: stem}\n"   # an error of its own, on a branch of the stem


def errors_of(write_spec, further: str) -> list[tuple[int, str]]:
    r = run_cli("check", write_spec(STAGES.replace("FURTHER", further)))
    assert r.returncode == 1 and r.stdout == ""
    return [(int(m[1]), m[2]) for m in re.finditer(r"spec\.yaml:(\d+):\d+: error: (.*)", r.stderr)]


def test_a_join_that_fails_in_a_residual_block_is_the_root_cause_not_what_it_causes(write_spec):
    """Before: the shape pass stopped at the concat that layer2's 30x30 map broke further down, and layer2's
    own error, which insert_shortcuts would have found, was never printed."""
    (line, msg), = errors_of(write_spec, CONCAT)
    assert line == 19 and msg.startswith("no integer stride maps [16, 32, 32] to [64, 30, 30]: the add at 'layer2'")


def test_the_root_cause_prints_before_an_error_it_causes_in_a_block_defined_above(write_spec):
    """Before: both joins failed in insert_shortcuts, printed in line order: layer3's (line 8, a consequence)
    first. Now: graph order, and layer3, which depends on the broken layer2, is not reported at all."""
    (line, msg), = errors_of(write_spec, "")
    assert line == 19 and "the add at 'layer2'" in msg


def test_an_unrelated_error_further_down_is_still_reported_after_the_root_cause(write_spec):
    found = errors_of(write_spec, CONCAT + UNRELATED)
    assert [line for line, _ in found] == [19, 27] and "groups=3" in found[1][1]


def test_a_shape_error_inside_a_residual_body_prints_before_a_later_error_of_a_block_defined_above(write_spec):
    """The residual body of stage 2 (line 22) multiplies maps of 64 and 16 channels; a layer further down calls
    the block defined at line 5 with a kernel that collapses its map. Line order would print that first."""
    body = "        - conv: {out: 64, kernel: 1, id: wide}\n        - mul: {from: [input]}\n"
    text = STAGES.replace("        - conv: {out: 64, kernel: 3, padding: valid}\n        - bn\n", body)
    text = text.replace("      shortcut: zeropad\n", "").replace("        - conv: {out: $out, kernel: 3}\n",
                                                                  "        - maxpool: {kernel: $k}\n")
    text = text.replace("args: {out: null, stride: 1}", "args: {out: null, stride: 1, k: 1}")
    r = run_cli("check", write_spec(text.replace("FURTHER", "  - basic: {out: 8, k: 64, in: stem}\n")))
    assert r.returncode == 1
    lines = [int(m) for m in re.findall(r"spec\.yaml:(\d+):\d+: error:", r.stderr)]
    assert lines == [22, 12] and "layer2.mul1" in r.stderr and "(in basic1 from line 25)" in r.stderr
