"""Errors lead to their root cause: block errors name the call site, cycles print in dataflow order,
concat errors name each input by id with a hint for the case at hand."""
import pytest

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
